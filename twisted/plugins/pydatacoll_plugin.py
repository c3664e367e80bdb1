"""twistd plugin: makes ``twistd pydatacoll`` available."""

from twisted.application.service import ServiceMaker

pydatacoll = ServiceMaker(
    "PyDataColl",
    "pydatacoll.tap",
    "SCADA front-end processor (REST API, devices, Redis)",
    "pydatacoll",
)
