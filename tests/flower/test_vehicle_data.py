"""A user's text for simulated vehicles: per-vehicle entries, or one corpus split by flwr-datasets."""

import json
from collections import Counter
from pathlib import Path

import datasets
import pytest

from splitkd_flwr.core.errors import ConfigError
from splitkd_flwr.data.corpus import generate_corpus
from splitkd_flwr.flower.config import RunConfig
from splitkd_flwr.flower.node_config import NodeConfig
from splitkd_flwr.flower.preflight import check_run
from splitkd_flwr.flower.vehicle_data import VehicleData

DOCS = generate_corpus(400, seed=3)
TOPIC_OF = {d.text: d.topic for d in DOCS}


@pytest.fixture(scope="module")
def saved_dataset(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A user's corpus as Hugging Face `datasets` writes it (save_to_disk), with a topic column."""
    path = tmp_path_factory.mktemp("user") / "cabin-dialogues"
    rows = {"text": [d.text for d in DOCS], "topic": [d.topic for d in DOCS]}
    datasets.Dataset.from_dict(rows).save_to_disk(str(path))
    return path


def _all(spec: VehicleData, n: int) -> list[list[str]]:
    return [spec.texts(i, n) for i in range(n)]


def test_dirichlet_partition_of_a_saved_dataset_is_disjoint_complete_and_skewed(
    saved_dataset: Path,
) -> None:
    # Prepare
    spec = VehicleData(
        str(saved_dataset), "dirichlet", partition_by="topic", dirichlet_alpha=0.1
    )

    # Execute
    parts = _all(spec, 4)
    again = _all(spec, 4)

    # Assert: every document once, the same split each time, topics skewed per vehicle
    flat = [t for part in parts for t in part]
    assert sorted(flat) == sorted(d.text for d in DOCS)
    assert parts == again
    overall = Counter(d.topic for d in DOCS)
    top_share = [
        Counter(TOPIC_OF[t] for t in part).most_common(1)[0][1] / len(part)
        for part in parts
    ]
    assert max(top_share) > 2 * max(overall.values()) / len(DOCS)


def test_iid_txt_column_jsonl_parquet_and_by_entry(tmp_path: Path) -> None:
    # Prepare: the same 400 dialogues as users keep them
    txt = tmp_path / "all.txt"
    txt.write_text("\n".join(d.text for d in DOCS) + "\n")
    jsonl = tmp_path / "all.jsonl"
    jsonl.write_text(
        "\n".join(json.dumps({"text": d.text, "topic": d.topic}) for d in DOCS)
    )
    parquet = tmp_path / "all.parquet"
    datasets.Dataset.from_dict(
        {"text": [d.text for d in DOCS], "topic": [d.topic for d in DOCS]}
    ).to_parquet(str(parquet))
    per_vehicle = tmp_path / "per-vehicle"
    per_vehicle.mkdir()
    for i in range(3):
        (per_vehicle / f"vehicle-{i}.txt").write_text(DOCS[i].text + "\n")

    # Execute
    iid = _all(VehicleData(str(txt)), 4)  # auto: a file is split IID
    by_topic = _all(VehicleData(str(jsonl), "column", partition_by="topic"), 3)
    from_parquet = _all(VehicleData(str(parquet), "iid"), 2)
    by_entry = _all(VehicleData(str(per_vehicle)), 3)  # auto: a plain directory

    # Assert
    assert [len(p) for p in iid] == [100] * 4
    assert sum(len(p) for p in from_parquet) == len(DOCS)
    assert all(len({TOPIC_OF[t] for t in part}) == 1 for part in by_topic)
    assert by_entry == [[DOCS[i].text] for i in range(3)]


def test_simulated_vehicles_take_vehicle_data_from_the_run_config(
    saved_dataset: Path,
) -> None:
    run_config = RunConfig(
        vehicle_data=str(saved_dataset),
        vehicle_partitioner="dirichlet",
        vehicle_partition_by="topic",
    ).to_run_config()
    node = NodeConfig.from_node_config(
        {"partition-id": 1, "num-partitions": 4}, run_config
    )
    assert node.vehicle_data is not None
    assert node.vehicle_data.texts(1, 4) == VehicleData(
        str(saved_dataset), "dirichlet", "topic"
    ).texts(1, 4)


@pytest.mark.parametrize(
    ("values", "named"),
    [
        ({"vehicle-data": "/no/such/corpus"}, "vehicle-data"),
        ({"vehicle-partitioner": "random"}, "vehicle-partitioner"),
        ({"vehicle-partitioner": "dirichlet"}, "vehicle-partition-by"),
    ],
)
def test_bad_vehicle_data_is_refused_before_the_run(
    values: dict, named: str, saved_dataset: Path
) -> None:
    with pytest.raises(ConfigError, match=named):
        check_run(
            RunConfig.from_run_config({"vehicle-data": str(saved_dataset), **values})
        )


def test_a_column_split_needs_the_column_and_a_value_per_vehicle(
    saved_dataset: Path,
) -> None:
    topics = len({d.topic for d in DOCS})
    by_topic = VehicleData(str(saved_dataset), "column", partition_by="topic")
    assert len(by_topic.texts(topics - 1, topics)) > 0
    with pytest.raises(ConfigError, match=f"{topics} values for {topics + 1} vehicles"):
        by_topic.texts(0, topics + 1)
    with pytest.raises(ConfigError, match="no column 'driver'"):
        VehicleData(str(saved_dataset), "column", partition_by="driver").texts(0, 2)
