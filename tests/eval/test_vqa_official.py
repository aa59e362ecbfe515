"""VQAv2 accuracy against a transcription of the official evaluation script, on hard cases: difference 0.

Reference: GT-Vision-Lab/VQA, PythonEvaluationTools/vqaEvaluation/vqaEval.py at master
a013f0043c1e2cdc995922dfe257f7149aa9af06 ("Fixed processing answers bug"). `OfficialVQAEval` below follows
its evaluate() / processPunctuation() / processDigitArticle() statement by statement (answers as dicts with
answer_id, the `item != gtAnsDatum` leave-one-out, the periodStrip regex verbatim with re.UNICODE passed as
sub()'s count, manualMap.setdefault), ported from Python 2 print statements only.
"""
from __future__ import annotations

import random
import re

import pytest

from internvl_train.eval.vqa import normalize_answer, vqa_accuracy, vqa_metrics

CONTRACTIONS = {
    'aint': "ain't", 'arent': "aren't", 'cant': "can't", 'couldve': "could've", 'couldnt': "couldn't", "couldn'tve":
    "couldn't've", "couldnt've": "couldn't've", 'didnt': "didn't", 'doesnt': "doesn't", 'dont': "don't", 'hadnt':
    "hadn't", "hadnt've": "hadn't've", "hadn'tve": "hadn't've", 'hasnt': "hasn't", 'havent': "haven't", 'hed':
    "he'd", "hed've": "he'd've", "he'dve": "he'd've", 'hes': "he's", 'howd': "how'd", 'howll': "how'll", 'hows':
    "how's", "Id've": "I'd've", "I'dve": "I'd've", 'Im': "I'm", 'Ive': "I've", 'isnt': "isn't", 'itd': "it'd",
    "itd've": "it'd've", "it'dve": "it'd've", 'itll': "it'll", "let's": "let's", 'maam': "ma'am", 'mightnt':
    "mightn't", "mightnt've": "mightn't've", "mightn'tve": "mightn't've", 'mightve': "might've", 'mustnt':
    "mustn't", 'mustve': "must've", 'neednt': "needn't", 'notve': "not've", 'oclock': "o'clock", 'oughtnt':
    "oughtn't", "ow's'at": "'ow's'at", "'ows'at": "'ow's'at", "'ow'sat": "'ow's'at", 'shant': "shan't", "shed've":
    "she'd've", "she'dve": "she'd've", "she's": "she's", 'shouldve': "should've", 'shouldnt': "shouldn't",
    "shouldnt've": "shouldn't've", "shouldn'tve": "shouldn't've", "somebody'd": 'somebodyd', "somebodyd've":
    "somebody'd've", "somebody'dve": "somebody'd've", 'somebodyll': "somebody'll", 'somebodys': "somebody's",
    'someoned': "someone'd", "someoned've": "someone'd've", "someone'dve": "someone'd've", 'someonell':
    "someone'll", 'someones': "someone's", 'somethingd': "something'd", "somethingd've": "something'd've",
    "something'dve": "something'd've", 'somethingll': "something'll", 'thats': "that's", 'thered': "there'd",
    "thered've": "there'd've", "there'dve": "there'd've", 'therere': "there're", 'theres': "there's", 'theyd':
    "they'd", "theyd've": "they'd've", "they'dve": "they'd've", 'theyll': "they'll", 'theyre': "they're", 'theyve':
    "they've", 'twas': "'twas", 'wasnt': "wasn't", "wed've": "we'd've", "we'dve": "we'd've", 'weve': "we've",
    'werent': "weren't", 'whatll': "what'll", 'whatre': "what're", 'whats': "what's", 'whatve': "what've", 'whens':
    "when's", 'whered': "where'd", 'wheres': "where's", 'whereve': "where've", 'whod': "who'd", "whod've":
    "who'd've", "who'dve": "who'd've", 'wholl': "who'll", 'whos': "who's", 'whove': "who've", 'whyll': "why'll",
    'whyre': "why're", 'whys': "why's", 'wont': "won't", 'wouldve': "would've", 'wouldnt': "wouldn't", "wouldnt've":
    "wouldn't've", "wouldn'tve": "wouldn't've", 'yall': "y'all", "yall'll": "y'all'll", "y'allll": "y'all'll",
    "yall'd've": "y'all'd've", "y'alld've": "y'all'd've", "y'all'dve": "y'all'd've", 'youd': "you'd", "youd've":
    "you'd've", "you'dve": "you'd've", 'youll': "you'll", 'youre': "you're", 'youve': "you've"
}
MANUAL_MAP = {"none": "0", "zero": "0", "one": "1", "two": "2", "three": "3", "four": "4", "five": "5", "six": "6",
              "seven": "7", "eight": "8", "nine": "9", "ten": "10"}
ARTICLES = ["a", "an", "the"]


class OfficialVQAEval:
    periodStrip = re.compile(r"(?!<=\d)(\.)(?!\d)")
    commaStrip = re.compile(r"(\d)(\,)(\d)")
    punct = [";", r"/", "[", "]", '"', "{", "}", "(", ")", "=", "+", "\\", "_", "-", ">", "<", "@", "`", ",", "?", "!"]

    def __init__(self) -> None:
        self.contractions, self.manualMap, self.articles = dict(CONTRACTIONS), dict(MANUAL_MAP), list(ARTICLES)

    def accuracy(self, resAns: str, gt_answers: list[str]) -> float:
        answers = [{"answer": a, "answer_confidence": "yes", "answer_id": i + 1} for i, a in enumerate(gt_answers)]
        for ansDic in answers:
            ansDic["answer"] = ansDic["answer"].replace("\n", " ")
            ansDic["answer"] = ansDic["answer"].replace("\t", " ")
            ansDic["answer"] = ansDic["answer"].strip()
        resAns = resAns.replace("\n", " ")
        resAns = resAns.replace("\t", " ")
        resAns = resAns.strip()
        gtAcc = []
        gtAnswers = [ans["answer"] for ans in answers]
        if len(set(gtAnswers)) > 1:
            for ansDic in answers:
                ansDic["answer"] = self.processPunctuation(ansDic["answer"])
                ansDic["answer"] = self.processDigitArticle(ansDic["answer"])
            resAns = self.processPunctuation(resAns)
            resAns = self.processDigitArticle(resAns)
        for gtAnsDatum in answers:
            otherGTAns = [item for item in answers if item != gtAnsDatum]
            matchingAns = [item for item in otherGTAns if item["answer"] == resAns]
            acc = min(1, float(len(matchingAns)) / 3)
            gtAcc.append(acc)
        return float(sum(gtAcc)) / len(gtAcc)

    def processPunctuation(self, inText: str) -> str:
        outText = inText
        for p in self.punct:
            if (p + " " in inText or " " + p in inText) or (re.search(self.commaStrip, inText) != None):  # noqa: E711
                outText = outText.replace(p, "")
            else:
                outText = outText.replace(p, " ")
        outText = self.periodStrip.sub("", outText, re.UNICODE)
        return outText

    def processDigitArticle(self, inText: str) -> str:
        outText = []
        tempText = inText.lower().split()
        for word in tempText:
            word = self.manualMap.setdefault(word, word)
            if word not in self.articles:
                outText.append(word)
        for wordId, word in enumerate(outText):
            if word in self.contractions:
                outText[wordId] = self.contractions[word]
        return " ".join(outText)


OFFICIAL = OfficialVQAEval()

HARD = ["2.", "2", "50%", "50", "it's", "its", "it is", "1,000", "1000", "1 000", "t-shirt", "t shirt", "tshirt",
        "t - shirt", "yes.", "yes", "Yes", "yes!", "YES", " yes ", "yes\n", "\tno", "no?", "Two", "two", "2 ", "the dog",
        "dog", "a dog", "The Dog.", "an apple", "dont", "don't", "Dont", "hes", "he's", "im", "Im", "ive", "yall",
        "y'all", "none", "0", "zero", "ten", "10", "3.14", "3.", ".5", "a.m.", "am", "U.S.A.", "usa", "red, white",
        "red,white", "red white", "12, 000", "12,000 feet", "black/white", "black / white", "black and white",
        "(left)", "left", "left side", "$5", "5 dollars", "5:00", "5 00", "many", "3 people.", "three people",
        "couldnt've", "couldn'tve", "whats", "what's", "o'clock", "oclock", "' ", "\"hi\"", "hi", "a", "the", "",
        "a-b-c", "a - b", "one, two", "1,2", "x" + "." * 40, "x", "mr. smith", "mr smith", "e-mail", "email",
        "hot dog", "hotdog", "hot-dog", "nothing", "café", "Café", "2 dogs", "two dogs.", "#1", "1", "up;down"]


def hard_cases() -> list[tuple[str, list[str]]]:
    rng = random.Random(0)
    cases = []
    for pred in HARD:  # every hard string as a prediction against mixed and identical answer lists
        cases.append((pred, [pred] * 10))
        cases.append((pred, [normalize_like_annotators(pred)] * 10))
        for _ in range(6):
            n = rng.choice([10, 10, 10, 2, 3, 5])
            cases.append((pred, [rng.choice(HARD) for _ in range(n)]))
    for _ in range(3000):
        base = rng.choice(HARD)
        answers = [rng.choice([base, rng.choice(HARD)]) for _ in range(rng.choice([10, 2, 4, 9]))]
        cases.append((rng.choice(answers + [rng.choice(HARD)]), answers))
    return cases


def normalize_like_annotators(text: str) -> str:
    return text.strip().lower()


@pytest.mark.parametrize("prediction, answers", [
    ("2.", ["2"] * 9 + ["3"]), ("50%", ["50"] * 5 + ["50%"] * 5), ("it's", ["its"] * 4 + ["it's"] * 6),
    ("1,000", ["1000"] * 3 + ["1 000"] * 7), ("t-shirt", ["t shirt"] * 4 + ["tshirt"] * 6), ("yes.", ["yes"] * 10),
    ("Yes", ["yes"] * 10), ("yes", ["yes"] * 10), ("Two", ["2"] * 2 + ["two"] * 2 + ["3"] * 6),
    ("the dog", ["dog"] * 3 + ["a dog"] * 2 + ["cat"] * 5), ("yes!", ["yes"] * 9 + ["no"]),
    ("no?", ["no."] * 10), ("12, 000", ["12000"] * 3 + ["12,000"] * 7), ("x" + "." * 40, ["x"] * 5 + ["y"] * 5),
])
def test_named_hard_cases_equal_official(prediction: str, answers: list[str]) -> None:
    assert vqa_accuracy(prediction, answers, metric="vqav2") == OFFICIAL.accuracy(prediction, answers)


def test_random_hard_case_table_equals_official_difference_zero() -> None:
    cases = hard_cases()
    diffs = [(p, a, vqa_accuracy(p, a, "vqav2"), OFFICIAL.accuracy(p, a)) for p, a in cases
             if vqa_accuracy(p, a, "vqav2") != OFFICIAL.accuracy(p, a)]
    assert len(cases) > 3500 and diffs == []
    # the table exercises every branch: agreeing annotators (no processing), partial credit, full credit
    scores = {OFFICIAL.accuracy(p, a) for p, a in cases}
    assert {0.0, 1.0} <= scores and any(0 < s < 1 for s in scores)


@pytest.mark.parametrize("text", HARD)
def test_full_processing_equals_official(text: str) -> None:
    cleaned = text.replace("\n", " ").replace("\t", " ").strip()
    assert normalize_answer(text) == OFFICIAL.processDigitArticle(OFFICIAL.processPunctuation(cleaned))


def test_known_values_of_the_official_rules() -> None:
    assert normalize_answer("2.") == "2" and normalize_answer("50%") == "50%" and normalize_answer("1,000") == "1000"
    assert normalize_answer("t-shirt") == "t shirt" and normalize_answer("t - shirt") == "t shirt"
    assert normalize_answer("it's") == "it's" and normalize_answer("its") == "its"  # no 'its' in the table
    assert normalize_answer("3.14") == "3.14" and normalize_answer("Two") == "2" and normalize_answer("the dog") == "dog"
    assert vqa_accuracy("Yes", ["yes"] * 10) == 0.0  # annotators agree: no processing (official, on purpose)
    assert vqa_accuracy("yes", ["yes"] * 10) == 1.0
    assert vqa_accuracy("Yes", ["yes"] * 9 + ["no"]) == 1.0
    assert vqa_accuracy("2", ["2"] + ["3"] * 9) == pytest.approx(0.3)


def test_single_answer_is_exact_match_not_the_official_zero() -> None:
    # the official leave-one-out gives 0 with one answer; we score exact match (documented departure)
    assert OFFICIAL.accuracy("yes", ["yes"]) == 0.0
    assert vqa_accuracy("Yes.", ["yes"]) == 1.0


def test_exact_match_is_a_separate_named_metric() -> None:
    m = vqa_metrics({"q": "Grey"}, {"q": ["gray", "grey"]}, metric="exact_match")
    assert m["exact_match_accuracy"] == m["vqa_accuracy"] == 100.0 and "vqav2_accuracy" not in m
    v = vqa_metrics({"q": "grey"}, {"q": ["gray", "grey"]}, metric="vqav2")
    assert v["vqav2_accuracy"] == pytest.approx(100 / 6) and "exact_match_accuracy" not in v
    assert vqa_accuracy("Yes", ["yes"] * 10, metric="exact_match") == 1.0
