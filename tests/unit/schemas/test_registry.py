import json

import pytest

from schemas import Registry, RegistryError, UnknownSchemaError
from schemas.registry import DEFAULT_ROOT

from .registries import order_placed, write_registry

DESIGN_EVENTS = {
    "user.created",
    "order.placed",
    "order.payment_confirmed",
    "order.shipped",
    "order.cancelled",
    "inventory.reserve",
    "inventory.reserved",
    "inventory.rejected",
    "inventory.release",
    "inventory.released",
    "payment.process",
    "payment.processed",
    "payment.failed",
    "payment.refund",
    "payment.refunded",
    "shipment.create",
    "shipment.created",
    "shipment.cancel",
    "shipment.failed",
    "shipment.cancelled",
    "order.saga_completed",
    "order.saga_failed",
}


@pytest.fixture(scope="module")
def registry():
    return Registry.load()


def test_every_event_of_the_design_has_a_schema(registry):
    assert set(registry.names) == DESIGN_EVENTS


def test_ids_are_stable(registry):
    # Producers have these ids on the wire: changing one breaks every stored record.
    assert registry.get("user.created", "1.0").id == 1
    assert registry.get("order.placed", "1.0.0").id == 2
    assert registry.get("order.saga_failed", "1.0").id == 20
    assert registry.get("user.created", "1.1").id == 21
    assert registry.get("shipment.cancelled", "1.0").id == 22
    assert registry.get("shipment.failed", "1.0").id == 23
    assert len({e.id for e in registry}) == len(registry) == 23


def test_lookup_by_id_and_by_name_and_version(registry):
    entry = registry.by_id(2)
    assert (entry.name, entry.version) == ("order.placed", "1.0")
    assert registry.get("order.placed", "1.0.7") is entry  # patch versions share the schema
    assert [f["name"] for f in entry.payload["fields"]] == [
        "orderId",
        "customerId",
        "items",
        "totalAmount",
        "currency",
    ]


def test_unknown_lookups_are_clear(registry):
    with pytest.raises(UnknownSchemaError, match=r"schema id 999 is not in the registry"):
        registry.by_id(999)
    with pytest.raises(UnknownSchemaError, match=r"order.placed 3.1 .*known versions: 1.0"):
        registry.get("order.placed", "3.1")


def test_payload_fields_follow_the_seed_domain(registry):
    def fields(name):
        return {f["name"] for f in registry.get(name, "1.0").payload["fields"]}

    assert fields("user.created") == {"userId", "email", "name"}
    assert fields("order.payment_confirmed") == {"orderId", "paymentId", "amount"}
    assert fields("order.shipped") == {"orderId", "trackingNumber", "carrier"}
    assert fields("order.cancelled") == {"orderId", "reason"}
    domain = {"user.created", "order.placed", "order.payment_confirmed", "order.shipped"}
    for name in DESIGN_EVENTS - domain - {"order.cancelled"}:
        assert {"orderId", "sagaId"} <= fields(name), name


def test_a_duplicate_id_is_refused(tmp_path):
    write_registry(
        tmp_path, {("order.placed", "1.0"): order_placed(), ("order.placed", "1.1"): order_placed()}
    )
    doc = json.loads((tmp_path / "registry.json").read_text())
    doc["schemas"][1]["id"] = 1
    (tmp_path / "registry.json").write_text(json.dumps(doc))
    with pytest.raises(
        RegistryError, match=r"order.placed 1.1 \(id 1\): id 1 is already used by order.placed 1.0"
    ):
        Registry.load(tmp_path, {})


def test_a_changed_schema_is_refused(tmp_path):
    write_registry(tmp_path, {("order.placed", "1.0"): order_placed()})
    edited = order_placed({"name": "note", "type": ["null", "string"], "default": None})
    (tmp_path / "avsc/order.placed/1.0.avsc").write_text(json.dumps(edited))
    with pytest.raises(RegistryError, match=r"published schemas are immutable"):
        Registry.load(tmp_path, {})


def test_docs_may_change_without_a_new_version(tmp_path):
    write_registry(tmp_path, {("order.placed", "1.0"): order_placed()})
    documented = {**order_placed(), "doc": "Now with documentation."}
    (tmp_path / "avsc/order.placed/1.0.avsc").write_text(json.dumps(documented))
    assert len(Registry.load(tmp_path, {})) == 1


def test_an_unregistered_file_says_what_to_add(tmp_path):
    write_registry(tmp_path, {("order.placed", "1.0"): order_placed()})
    (tmp_path / "avsc/order.placed/1.1.avsc").write_text(json.dumps(order_placed()))
    with pytest.raises(RegistryError) as info:
        Registry.load(tmp_path, {})
    assert (
        "avsc/order.placed/1.1.avsc is not registered; add to registry.json: "
        '{"id":2,"event":"order.placed","version":"1.1","fingerprint":"' in str(info.value)
    )


def test_a_new_major_version_needs_an_upcaster(tmp_path):
    write_registry(
        tmp_path, {("order.placed", "1.0"): order_placed(), ("order.placed", "2.0"): order_placed()}
    )
    with pytest.raises(
        RegistryError,
        match=r"no upcaster reads order.placed 1.x: add \('order.placed', 1\) to UPCASTERS",
    ):
        Registry.load(tmp_path, {})


@pytest.mark.parametrize(
    ("field_type", "message"),
    [
        (["null", "string", "int"], "only null plus one type"),
        (
            {"type": "long", "logicalType": "timestamp-millis"},
            "logical type 'timestamp-millis' is not supported",
        ),
        ("bytes", "bytes cannot travel in the JSON form"),
        ("strnig", "not a usable Avro schema"),
        ({"type": "array", "items": "null"}, "its elements take no bytes in Avro"),
        (
            {"type": "array", "items": {"type": "record", "name": "Nothing", "fields": []}},
            "its elements take no bytes in Avro",
        ),
    ],
)
def test_schemas_the_json_form_cannot_carry_are_refused(tmp_path, field_type, message):
    write_registry(
        tmp_path, {("order.placed", "1.0"): order_placed({"name": "x", "type": field_type})}
    )
    with pytest.raises(RegistryError, match=message):
        Registry.load(tmp_path, {})


def test_a_default_of_the_wrong_type_is_refused(tmp_path):
    bad = order_placed({"name": "note", "type": ["null", "string"], "default": "x"})
    write_registry(tmp_path, {("order.placed", "1.0"): bad})
    with pytest.raises(
        RegistryError, match=r"field 'note' of record eventide.order.OrderPlaced: default"
    ):
        Registry.load(tmp_path, {})


def test_committed_registry_lives_beside_the_package():
    assert (DEFAULT_ROOT / "registry.json").is_file()
    assert (DEFAULT_ROOT / "avsc" / "envelope.avsc").is_file()
