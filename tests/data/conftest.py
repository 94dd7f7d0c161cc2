"""Small hand-made dataset folders, one per supported format, written into tmp_path."""

import json
import pathlib

import numpy as np
import pytest


def write(path: pathlib.Path, text: str) -> pathlib.Path:
  path.parent.mkdir(parents=True, exist_ok=True)
  path.write_text(text, encoding="utf-8")
  return path


@pytest.fixture
def recbole_dir(tmp_path):
  """RecBole atomic files: unsorted timestamps, a tie, 1-based ids, genres, user fields."""
  folder = tmp_path / "tiny-recbole"
  write(
    folder / "tiny.inter",
    "user_id:token\titem_id:token\trating:float\ttimestamp:float\n"
    "2\t3\t4\t50\n"
    "1\t2\t5\t30\n"
    "1\t1\t3\t10\n"
    "2\t1\t1\t50\n"  # tie with the first row of user 2: file order decides
    "1\t4\t2\t20\n"
    "2\t4\t3\t40\n",
  )
  write(
    folder / "tiny.item",
    "item_id:token\tmovie_title:token_seq\trelease_year:token\t"
    "class:token_seq\n"
    "1\tAlpha\t1990\tDrama Comedy\n"
    "2\tBeta\t1991\tAction\n"
    "3\tGamma\t1992\tComedy Action\n"
    "4\tDelta\t1993\tDrama\n"
    "5\tNever Seen\t1994\tHorror\n",
  )
  write(folder / "tiny.user", "user_id:token\tage:token\tgender:token\n1\t20\tF\n2\t30\tM\n")
  return folder


@pytest.fixture
def s3rec_dir(tmp_path):
  folder = tmp_path / "tiny-s3rec"
  write(folder / "Toy.txt", "1 1 2 3 4\n2 2 5 1\n3 6 1 2 3 5\n")
  write(
    folder / "Toy_item2attributes.json",
    json.dumps({"1": [7, 3], "2": [3], "3": [9, 7], "4": [7], "5": [3, 9], "6": [9]}),
  )
  return folder


SCI_ITEMS = {
  "0": {
    "title": "A &amp; B",
    "description": "d0",
    "brand": "b0",
    "categories": "Industrial & Scientific,Tapes, Adhesives & Sealants,Glue",
  },
  "1": {
    "title": "C",
    "description": "",
    "brand": "b1",
    "categories": "Industrial & Scientific,Lab,Pipettes",
  },
  "2": {"title": "D", "description": "", "brand": "", "categories": ""},
  "3": {
    "title": "E",
    "description": "",
    "brand": "b3",
    "categories": "Industrial & Scientific,Tapes, Adhesives & Sealants,Tape",
  },
  "4": {
    "title": "F",
    "description": "",
    "brand": "b4",
    "categories": "Industrial & Scientific,Lab",
  },
}


@pytest.fixture
def lcrec_dir(tmp_path):
  """Scientific-like LC-Rec JSON: 0-based ids, levels joined by ',' (names may hold ', ')."""
  folder = tmp_path / "tiny-lcrec"
  write(folder / "Sci.inter.json", json.dumps({"0": [0, 1, 2, 3], "1": [4, 0, 3], "2": [2, 1]}))
  write(folder / "Sci.item.json", json.dumps(SCI_ITEMS, indent=2))
  return folder


@pytest.fixture
def office_dir(tmp_path):
  """Office-like LC-Rec JSON: levels joined by ', '."""
  folder = tmp_path / "tiny-office"
  items = {
    "0": {
      "title": "t0",
      "description": "",
      "brand": "",
      "categories": "Office Electronics, Phones, Cordless",
    },
    "1": {
      "title": "t1",
      "description": "",
      "brand": "",
      "categories": "Office Electronics, Printers",
    },
    "2": {
      "title": "t2",
      "description": "",
      "brand": "",
      "categories": "Office & School Supplies, Paper",
    },
  }
  write(folder / "Office.inter.json", json.dumps({"0": [0, 1, 2], "1": [2, 1, 0]}))
  write(folder / "Office.item.json", json.dumps(items))
  return folder


@pytest.fixture
def codes_dir(tmp_path):
  """Instruments-like LC-Rec folder: inter.json, text/image codes, item2id, user2id."""
  folder = tmp_path / "tiny-codes"
  write(folder / "Ins.inter.json", json.dumps({"0": [0, 1, 2], "1": [3, 2, 1, 0]}))
  write(
    folder / "Ins.index_lemb.json",
    json.dumps(
      {
        "0": ["<a_5>", "<b_1>", "<c_2>", "<d_3>"],
        "1": ["<a_7>", "<b_1>", "<c_2>", "<d_3>"],
        "2": ["<a_5>", "<b_9>", "<c_2>", "<d_3>"],
        "3": ["<a_0>", "<b_1>", "<c_2>", "<d_3>"],
      }
    ),
  )
  write(
    folder / "Ins.index_vitemb.json",
    json.dumps(
      {
        "0": ["<A_1>", "<B_1>", "<C_2>", "<D_3>"],
        "1": ["<A_1>", "<B_2>", "<C_2>", "<D_3>"],
        "2": ["<A_2>", "<B_9>", "<C_2>", "<D_3>"],
        "3": ["<A_2>", "<B_1>", "<C_2>", "<D_3>"],
      }
    ),
  )
  write(folder / "Ins.item2id", "ASIN0\t0\nASIN1\t1\nASIN2\t2\nASIN3\t3\n")
  write(folder / "Ins.user2id", "U0\t0\nU1\t1\n")
  return folder


@pytest.fixture
def unisrec_dir(tmp_path):
  """UniSRec/MISSRec layout with 0-based ids, text, CLIP features and derived categories."""
  folder = tmp_path / "tiny-unisrec"
  head = "user_id:token\titem_id_list:token_seq\titem_id:token\n"
  write(folder / "Sci.train.inter", head + "0\t0\t1\n")
  write(folder / "Sci.valid.inter", head + "0\t0 1\t2\n1\t3 2\t0\n")
  write(folder / "Sci.test.inter", head + "0\t0 1 2\t3\n1\t3 2 0\t1\n")
  write(folder / "Sci.item2index", "B0\t0\nB1\t1\nB2\t2\nB3\t3\n")
  write(folder / "Sci.user2index", "R0\t0\nR1\t1\n")
  write(
    folder / "Sci.text",
    "item_id:token\ttext:token_seq\nB2\tthird item.\nB0\tfirst item.\nB1\tsecond.\nB3\tfourth.\n",
  )
  write(
    folder / "Sci.categories.derived.tsv",
    "item_index\tasin\tcategories\n"
    "0\tB0\tIndustrial & Scientific,Lab,Pipettes\n"
    "1\tB1\tIndustrial & Scientific,Tapes, Adhesives & Sealants\n"
    "2\tB2\t\n"
    "3\tB3\tIndustrial & Scientific,Lab\n",
  )
  features = np.arange(4 * 512, dtype=np.float32).reshape(4, 512)
  features.tofile(folder / "Sci.feat1CLS")
  (-features).tofile(folder / "Sci.feat3CLS")
  return folder
