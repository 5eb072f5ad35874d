"""The feeding order: every epoch a shuffled pass over the training set, the last epoch's end
cut exactly, and a resumed run going on where its progress says; what each version sampled."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

from gvloop.feeding import FeedConfig, Feeder, FeedProgress, SampleStats
from gvloop.runstate import RunState
from services.clients import GeneratorClient
from services.schemas import ProblemIn

TRAIN = [ProblemIn(problem=f"P{i}?", reference_answer=str(i)) for i in range(10)]


def feeder(epochs: int | None, progress: FeedProgress | None = None) -> Feeder:
    config = FeedConfig(epochs=epochs, problems_per_request=4, seed=3)
    state = RunState(Path("unused"))
    return Feeder(config, TRAIN, GeneratorClient("http://unused"), state, progress=progress)


def taken(feeder: Feeder) -> list[str]:
    problems = []
    while batch := feeder.take():
        problems += [p.problem for p in batch]
        if len(problems) > 100:
            break
    return problems


def test_each_epoch_is_a_shuffled_pass_and_the_last_ends_exactly() -> None:
    fed = feeder(epochs=2)
    problems = taken(fed)
    assert len(problems) == 20 and fed.finished
    first, second = problems[:10], problems[10:]
    assert sorted(first) == sorted(second) == sorted(p.problem for p in TRAIN)
    assert first != second  # a new order each epoch
    assert first != [p.problem for p in TRAIN]


def test_without_epochs_feeding_goes_on() -> None:
    fed = feeder(epochs=None)
    assert len(taken(fed)) > 100 and not fed.finished
    assert set(Counter(taken(feeder(None))[:30]).values()) == {3}  # 3 whole epochs


def test_a_resumed_run_goes_on_from_its_place(tmp_path: Path) -> None:
    whole = taken(feeder(epochs=2))
    first = feeder(epochs=2)
    first.take(), first.take(), first.take()  # 12 problems
    path = tmp_path / "progress.json"
    first.progress.save(path)
    resumed = feeder(epochs=2, progress=FeedProgress.load(path))
    assert taken(resumed) == whole[12:]
    assert FeedProgress.load(tmp_path / "none.json") == FeedProgress()


def test_sample_stats_count_problems_all_wrong_and_all_right() -> None:
    stats = SampleStats()
    stats.add(["5", "5", "6", "7"], correct=0)  # none right
    stats.add(["4", "4", "4", "4"], correct=4)  # all right
    stats.add(["3", "4", None, "4"], correct=2)  # some right
    stats.add(["9"], correct=0)  # a problem's one sample of this version (a swap split it)
    assert (stats.problems, stats.samples, stats.correct) == (4, 13, 6)
    assert (stats.all_wrong, stats.all_right) == (2, 1)
    assert stats.distinct_sum == 3 / 4 + 1 / 4 + 3 / 4 + 1
