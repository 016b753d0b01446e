from streams.app import _broker_url, severity


def test_alert_severity_levels():
    assert severity(0.29, 0.3, 0.5) is None
    assert severity(0.3, 0.3, 0.5) == "warning"
    assert severity(0.49, 0.3, 0.5) == "warning"
    assert severity(0.5, 0.3, 0.5) == "critical"


def test_broker_url_accepts_kafka_bootstrap_lists():
    assert _broker_url("a:9092, b:9093") == "kafka://a:9092;kafka://b:9093"
