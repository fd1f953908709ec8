"""Row plans of `mtq eval quality`: K/V pair rows, --pairs parsing, devices, and worker processes."""
from __future__ import annotations

import pytest
import torch

from multi_turboquant.eval.cli import _pairs
from multi_turboquant.eval.hooks import check_device
from multi_turboquant.eval.quality import RowPlan, Task, evaluate

D = 64


def test_pairs_parse_and_refuse_bad_items():
    assert _pairs(" isoquant4:turboquant25, turboquant35:turboquant25,") == (
        ("isoquant4", "turboquant25"), ("turboquant35", "turboquant25"))
    assert _pairs("") == ()
    with pytest.raises(ValueError, match="KEY_FORMAT:VALUE_FORMAT"):
        _pairs("isoquant4")
    with pytest.raises(ValueError, match="unknown KV-cache format 'isoquant9'"):
        _pairs("isoquant9:isoquant3")


@pytest.mark.parametrize("extra, message", [
    (["--jobs", "0"], "--jobs must be at least 1"),
    (["--exact-first", "-1"], "--exact-first at least 0"),
    (["--pairs", "isoquant4"], "KEY_FORMAT:VALUE_FORMAT"),
])
def test_bad_options_are_refused_before_the_model_loads(extra, message, capsys):
    from multi_turboquant.cli import main

    # a model folder that does not exist: reaching the model load would fail with another message
    assert main(["eval", "quality", "--model", "/nonexistent/model", *extra]) == 2
    assert message in capsys.readouterr().err


def test_calibrate_refuses_a_negative_sink_weight():
    from multi_turboquant.eval.calibrate import calibrate

    class Model:
        head_dim = D

    with pytest.raises(ValueError, match="sink weight must be at least 0"):
        calibrate(Model(), torch.zeros(8, dtype=torch.long), 4, 0, "unused.json", "test", sink_weight=-1.0)


def test_pair_rows_count_each_stream_in_its_own_format():
    plan = RowPlan(("isoquant3",), calibrated=True, uncalibrated=False, peers=False,
                   pairs=(("isoquant4", "turboquant25"),))
    rows = plan.schemes()
    assert [r.name for r in rows] == ["bf16", "isoquant3 +calib", "K isoquant4 / V turboquant25 +calib"]
    pair = rows[-1]
    assert (pair.kind, pair.calibrated, pair.key.name, pair.value.name) == ("pair", True, "isoquant4", "turboquant25")
    assert pair.nbytes(D) == 34 + 24 and pair.bits(D) == pytest.approx(3.625)
    assert RowPlan((), calibrated=False, peers=False, pairs=(("isoquant4", "isoquant3"),)).schemes()[-1].name == \
        "K isoquant4 / V isoquant3"


def test_device_names_are_checked():
    assert check_device("cpu") == torch.device("cpu")
    with pytest.raises(ValueError, match="bad device 'gpu0'"):
        check_device("gpu0")
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="no CUDA GPU"):
            check_device("cuda")


def test_worker_processes_measure_what_one_process_does():
    pytest.importorskip("transformers")
    from multi_turboquant.eval.hooks import load_model
    from multi_turboquant.models import default_model

    try:
        lm = load_model(default_model())
    except ValueError as e:
        pytest.skip(str(e))
    ids = torch.tensor(lm.tokenizer("The licensee may copy and distribute the Program. " * 6).input_ids[:48])
    plan = RowPlan(("isoquant3",), calibrated=False, peers=False, pairs=(("isoquant4", "turboquant25"),))
    task = Task(ids, 24, ids[:32].reshape(2, 16), 3)
    one, two = (evaluate(lm, plan, task, jobs, log=lambda m: None) for jobs in (1, 2))
    assert [r.name for r in one] == [r.name for r in two] == ["bf16", "isoquant3", "K isoquant4 / V turboquant25"]
    # Workers run one thread each, this process may run more: float sums may round differently, so the teacher-forced
    # perplexity matches closely, not bit for bit (greedy agreement, a near-tie away from flipping, is not compared).
    for a, b in zip(one, two):
        assert a.ppl == pytest.approx(b.ppl, rel=1e-4)
    assert one[1].ppl != one[0].ppl


def test_calibrate_refuses_a_negative_horizon():
    from multi_turboquant.eval.calibrate import calibrate

    class Model:
        head_dim = D

    with pytest.raises(ValueError, match="horizon must be at least 0 positions"):
        calibrate(Model(), torch.zeros(8, dtype=torch.long), 4, 0, "unused.json", "test", horizon=-1)
