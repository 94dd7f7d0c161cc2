"""experiments.init_scale: the generated weights scale with --generator_init_scale."""

import numpy as np

from experiments import init_scale


def test_generated_weights_and_logits_shrink_with_the_generator_init():
  kw = {"num_items": 50, "batch": 64, "seed": 0}
  static = init_scale.measure("sasrec", "static", 1.0, **kw)
  big = init_scale.measure("sasrec", "duet", 1.0, **kw)
  small = init_scale.measure("sasrec", "duet", 0.01, **kw)
  assert static["generated_std"] == {}
  assert set(big["generated_std"]) == {"layer_0", "layer_1"}
  for layer, std in big["generated_std"].items():
    # The projections are linear in the init scale, so are the generated weights.
    np.testing.assert_allclose(small["generated_std"][layer], 0.01 * std, rtol=1e-4)
  assert small["logit_std"] < big["logit_std"]
  # Near-zero logits give the chance-level loss log 2.
  np.testing.assert_allclose(small["bce_at_init"], np.log(2.0), atol=1e-3)
