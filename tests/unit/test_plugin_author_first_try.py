"""What a plugin author meets first: their driver's options set as the docs say, the errors the
testing kit raises."""

from __future__ import annotations

import pytest
from oslo_config import cfg

from keramos.framework.config import make_conf, unclaimed_overrides
from keramos.framework.errors import ConfigError, PayloadError
from keramos.framework.testing import InProcessWorker
from keramos.plugins.noop import NoopCompute

FILE_COMPUTE_OPTS = [
    cfg.StrOpt("directory", help="where the instance files go"),
    cfg.IntOpt("files_per_instance", default=1, min=1),
]


class FileCompute(NoopCompute):
    """A third-party compute driver registering its own options as it is built, with no
    ``oslo.config.opts`` entry point."""

    def __init__(self, conf: cfg.ConfigOpts) -> None:
        conf.register_opts(FILE_COMPUTE_OPTS, group="filecompute")
        super().__init__(conf)
        self.directory = conf.filecompute.directory
        self.files_per_instance = conf.filecompute.files_per_instance


def test_conf_overrides_reach_options_a_driver_registers_in_its_init(tmp_path):
    overrides = {"filecompute": {"directory": str(tmp_path), "files_per_instance": 3}}
    with InProcessWorker(compute=FileCompute, conf_overrides=overrides) as worker:
        assert (worker.drivers.compute.directory, worker.drivers.compute.files_per_instance) == (
            str(tmp_path),
            3,
        )
        assert unclaimed_overrides(worker.conf) == []
        created = worker.cast_and_wait("create_amphora", {"amphora_id": "amp-1", "image_id": "img-1"})
        assert created["amphora"]["status"] == "READY"


def test_an_override_no_driver_registers_is_refused_with_what_to_do(tmp_path):
    overrides = {"filecompute": {"directory": str(tmp_path), "direcotry": "typo"}}
    worker = InProcessWorker(compute=FileCompute, conf_overrides=overrides)
    with pytest.raises(ConfigError) as refused:
        worker.start()
    message = str(refused.value)
    assert "[filecompute] direcotry" in message and "[filecompute] directory" not in message
    assert "conf.register_opts()" in message and "oslo.config.opts" in message


def test_an_override_of_a_registered_option_still_applies_at_once():
    conf = make_conf(config_files=[], overrides={"worker": {"executor_threads": 7}})
    assert conf.worker.executor_threads == 7
    assert unclaimed_overrides(conf) == []


def test_cast_and_wait_raises_the_refusal_of_a_bad_payload_as_its_own_error():
    with InProcessWorker() as worker:
        with pytest.raises(PayloadError, match="missing field") as refused:
            worker.cast_and_wait("create_amphora", {"image_id": "img-1"})
        assert refused.value.event == "create_amphora" and refused.value.request_id.startswith("req-")
        assert worker.drivers.compute.instances == {}


def test_a_driver_of_the_wrong_kind_is_named_as_given_not_as_an_entry_point():
    from keramos.plugins.noop import NoopNetwork

    with pytest.raises(TypeError, match="the compute driver given is a keramos.plugins.noop.NoopNetwork"):
        InProcessWorker(compute=NoopNetwork).start()
