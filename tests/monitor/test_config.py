"""MonitorConfig: the keyword options of Monitor as one value."""

from __future__ import annotations

import dataclasses
import inspect

import pytest

torch = pytest.importorskip("torch")

from floatguard.monitor import Monitor, MonitorConfig, Thresholds  # noqa: E402


def _net() -> tuple[torch.nn.Module, torch.optim.Optimizer]:
    net = torch.nn.Sequential(torch.nn.Linear(4, 3), torch.nn.ReLU(), torch.nn.Linear(3, 2))
    return net, torch.optim.SGD(net.parameters(), lr=0.1)


def test_every_keyword_of_monitor_is_a_config_field() -> None:
    keywords = [p.name for p in inspect.signature(Monitor).parameters.values()
                if p.kind is p.KEYWORD_ONLY and p.name != "config"]
    assert keywords == [f.name for f in dataclasses.fields(MonitorConfig)]
    doc = MonitorConfig.__doc__ or ""
    assert all(f"        {k}:" in doc for k in keywords)  # each one documented


def test_config_and_keywords_build_the_same_monitor() -> None:
    th = Thresholds(explode_rms=3.0)
    net, opt = _net()
    a = Monitor(net, opt, every=4, thresholds=th, num_classes=2, live=False)
    b = Monitor(net, opt, config=MonitorConfig(every=4, thresholds=th, num_classes=2, live=False))
    assert a.config == b.config and (a.every, a.th, a.state.num_classes) == (b.every, b.th, b.state.num_classes) == (
        4, th, 2)
    a.close()
    b.close()


def test_period_defaults() -> None:
    assert MonitorConfig().period == 10 and MonitorConfig(detailed=True).period == 1
    assert MonitorConfig(detailed=True, every=3).period == 3


def test_bad_options_are_refused_by_name() -> None:
    with pytest.raises(ValueError, match="'every' must be >= 1"):
        MonitorConfig(every=0)
    net, opt = _net()
    with pytest.raises(ValueError, match="'every' must be >= 1"):
        Monitor(net, opt, every=0)
    with pytest.raises(TypeError, match="not both"):
        Monitor(net, opt, config=MonitorConfig(), every=5)


def test_tensorboard_writers_as_a_list() -> None:
    class W:
        def add_scalar(self, tag: str, value: float, step: int) -> None: ...

        def add_text(self, tag: str, text: str, step: int) -> None: ...

    w = W()
    assert MonitorConfig(tensorboard=w).writers == [w]
    assert MonitorConfig(tensorboard=[w, w]).writers == [w, w]
    assert MonitorConfig().writers == []
