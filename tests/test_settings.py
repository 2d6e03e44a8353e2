"""Every settings class read from the environment refuses a GENSAR_* variable it does not
know, names it and the nearest valid name, and still reads the ones it does know."""

import pytest

from gensar.settings import PART_PREFIXES, Settings, SettingsError, StrictSettings
from identifiers.settings import IdentifierSettings, QdrantSettings
from learner.settings import LearnerSettings
from serving.settings import ServingSettings
from streams.settings import StreamSettings

# (class, a valid variable and value, the field it sets, a typo of it)
CASES = [
    (Settings, "GENSAR_CACHE_DIR", "/tmp/c", lambda s: str(s.cache_dir) == "/tmp/c", "GENSAR_CACHE_DIRR"),
    (Settings, "GENSAR_KAFKA__PARTITIONS", "8", lambda s: s.kafka.partitions == 8, "GENSAR_KAFKA__PARTITONS"),
    (StreamSettings, "GENSAR_STREAMS__HISTORY_LENGTH", "7", lambda s: s.history_length == 7,
     "GENSAR_STREAMS__HISTORY_LENGHT"),
    (ServingSettings, "GENSAR_SERVING__BEAM_SIZE", "12", lambda s: s.beam_size == 12, "GENSAR_SERVING__BEAM_SIZ"),
    (LearnerSettings, "GENSAR_LEARNER__MIN_SAMPLES", "5", lambda s: s.min_samples == 5, "GENSAR_LEARNER__MIN_SAMPLE"),
    (LearnerSettings, "GENSAR_LEARNER__LORA__ALPHA", "4", lambda s: s.lora.alpha == 4, "GENSAR_LEARNER__LORA__ALPA"),
    (Settings, "GENSAR_ARTIFACTS_DIR", "/tmp/a", lambda s: str(s.artifacts_dir) == "/tmp/a", "GENSAR_ARTIFACT_DIR"),
    (IdentifierSettings, "GENSAR_IDS__DEVICE", "cpu", lambda s: s.device == "cpu", "GENSAR_IDS__DEVISE"),
    (QdrantSettings, "GENSAR_QDRANT__COLLECTION", "c", lambda s: s.collection == "c", "GENSAR_QDRANT__COLECTION"),
]


@pytest.mark.parametrize("cls, name, value, took, typo", CASES, ids=[c[1] for c in CASES])
def test_an_unknown_variable_is_refused_with_the_nearest_name(monkeypatch, cls, name, value, took, typo):
    monkeypatch.setenv(name, value)
    assert took(cls())
    monkeypatch.setenv(typo, value)
    with pytest.raises(SettingsError) as refused:
        cls()
    assert typo in str(refused.value) and f"did you mean {name}?" in str(refused.value)


def test_the_root_settings_leave_each_part_its_own_variables_but_refuse_a_misspelt_part(monkeypatch):
    for prefix in PART_PREFIXES:
        monkeypatch.setenv(prefix + "SOMETHING", "1")  # the part's class judges these, not the root
    Settings()
    monkeypatch.setenv("GENSAR_SERVNG__PORT", "1")
    with pytest.raises(SettingsError, match="GENSAR_SERVNG__PORT"):
        Settings()


def test_every_part_settings_class_is_strict_and_registered():
    classes = [StreamSettings, ServingSettings, LearnerSettings, IdentifierSettings, QdrantSettings]
    assert all(issubclass(c, StrictSettings) for c in classes)
    assert sorted(c.model_config["env_prefix"] for c in classes) == sorted(PART_PREFIXES)
    with pytest.raises(TypeError, match="PART_PREFIXES"):
        type("Stray", (StrictSettings,), {"model_config": {"env_prefix": "GENSAR_STRAY__"}, "__module__": __name__})


def test_a_session_timeout_the_broker_would_refuse_is_refused_at_start(monkeypatch):
    monkeypatch.setenv("GENSAR_STREAMS__SESSION_TIMEOUT_S", "5")  # Kafka's default minimum is 6 s
    with pytest.raises(ValueError, match="session_timeout_s"):
        StreamSettings()
    monkeypatch.setenv("GENSAR_STREAMS__SESSION_TIMEOUT_S", "6")
    assert StreamSettings().session_timeout_s == 6
