"""The predecessor's CRUD fixtures (one device, term, item and point), for tests and demos."""

DEVICE = {
    "id": "1",
    "name": "concentrator 1",
    "ip": "127.0.0.1",
    "port": "2404",
    "identify": "111",
    "protocol": "iec104",
}
TERM = {
    "id": "10",
    "name": "meter 1",
    "address": "5",
    "identify": "term10",
    "protocol": "dlt645",
    "device_id": "1",
}
ITEM = {"id": "1000", "name": "phase A voltage", "view_code": "1000", "func_type": "measurement"}
TERM_ITEM = {
    "term_id": "10",
    "item_id": "1000",
    "protocol_code": "100",
    "code_type": "36",
    "base_val": "0",
    "coefficient": "1",
    "down_limit": "220",
    "up_limit": "230",
}

#: The requests that create them, in order: (method, path, body).
CREATE_ALL = [
    ("POST", "/api/v1/devices", DEVICE),
    ("POST", "/api/v1/terms", TERM),
    ("POST", "/api/v1/items", ITEM),
    ("POST", "/api/v1/terms/10/items", TERM_ITEM),
]
