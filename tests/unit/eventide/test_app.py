"""The app factory builds the projections declared in agents/ that the settings select."""

import pytest

from agents import PROJECTIONS, CustomersProjection, OrdersProjection
from eventide.app import create_app, select_projections
from streams.engine import Lookup
from streams.exceptions import SettingsError
from streams.settings import Settings


def test_every_declared_projection_runs_by_default_the_saga_when_enabled():
    assert select_projections(Settings.from_env({})) == list(PROJECTIONS[:3])
    assert select_projections(Settings.from_env({"EVENTIDE_SAGAS": "true"})) == list(PROJECTIONS)
    named = Settings.from_env({"EVENTIDE_PROJECTIONS": "orders,sagas"})
    assert [cls.spec.name for cls in select_projections(named)] == ["orders", "sagas"]
    assert [cls.spec.name for cls in PROJECTIONS] == [
        "orders",
        "customers",
        "notifications",
        "sagas",
    ]


def test_a_worker_runs_only_the_projections_it_is_given(tmp_path):
    env = {"EVENTIDE_PROJECTIONS": "customers,orders", "EVENTIDE_STATE_DIR": str(tmp_path)}
    assert select_projections(Settings.from_env(env)) == [OrdersProjection, CustomersProjection]
    env["EVENTIDE_PROJECTIONS"] = "orders"
    eventide = create_app(Settings.from_env(env))
    assert [p.table for p in eventide.engine.projections] == ["orders"]
    assert eventide.engine.lookup("customers", "c-1") == (Lookup.ABSENT, None)


def test_an_undeclared_projection_fails_at_start_up_naming_the_setting():
    settings = Settings.from_env({"EVENTIDE_PROJECTIONS": "orders,invoices"})
    with pytest.raises(SettingsError) as info:
        select_projections(settings)
    assert str(info.value) == (
        "EVENTIDE_PROJECTIONS='orders,invoices': no projection named invoices; "
        "the projections are orders, customers, notifications, sagas (or all)"
    )


def test_declarations_name_sources_outputs_and_queries():
    spec = OrdersProjection.spec
    assert [t.name for t in spec.sources] == ["order-events"]
    assert [t.name for t in spec.outputs] == ["customer-facts"]
    assert spec.changelog is not None and spec.changelog.name == "order-views"
    assert spec.query is not None and (spec.query.path, spec.query.id_field) == (
        "orders",
        "orderId",
    )
    projection = OrdersProjection(Settings.from_env({"EVENTIDE_TOPIC_PREFIX": "t1."}), None)  # type: ignore[arg-type]
    assert projection.sources == ("t1.order-events",)
    assert projection.outputs == {"customer-facts": "t1.customer-facts"}
    assert projection.changelog == "t1.order-views"
