from synthgen.generators.textcheck import is_japanese, japanese_ratio, leaks_answer, strip_label


def test_japanese_detection():
    assert is_japanese("潜水士が深さ30メートルの海底まで潜ります。何分かかりますか。")
    assert not is_japanese("The diver descends 30 meters.")
    assert not is_japanese("潜水员下潜到三十米深的海底需要多少分钟")  # Chinese: kanji but no kana
    assert not is_japanese("")
    # code blocks do not count against Japanese prose
    assert is_japanese("次のコードで計算できます。\n```python\nprint(sum(range(10)))\n```\n結果は45です。")
    assert 0.0 < japanese_ratio("日本 and English mixed text here") < 0.3


def test_strip_label():
    assert strip_label("問題：ある店でりんごを買います。") == "ある店でりんごを買います。"
    assert strip_label("**質問**: 何個ですか？") == "何個ですか？"
    assert strip_label("Q2: 速さが変わったら？") == "速さが変わったら？"
    assert strip_label("「追加の質問：条件を変えるとどうなりますか。」") == "条件を変えるとどうなりますか。"
    assert strip_label("追加の質問: 問題: 二重ラベル") == "二重ラベル"
    assert strip_label("問題の答えを考えましょう") == "問題の答えを考えましょう"


def test_leaks_answer():
    assert leaks_answer("30÷5はいくつですか。答えは6です。")
    assert leaks_answer("正解：6分")
    assert not leaks_answer("答えを求めなさい。")
