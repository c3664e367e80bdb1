"""Gateway entities: what the conversion accepts is what the OpenAPI schema says."""

from __future__ import annotations

from twisted.trial.unittest import SynchronousTestCase

from pydatacoll.errors import ValidationError
from pydatacoll.gateway.model import GatewayPoint

POINT = {"gateway_id": "g", "ioa": 5, "type_id": 13, "device_id": "d", "term_id": "t"}


class GroupsTests(SynchronousTestCase):
    def test_integral_floats_are_integers(self) -> None:
        """JSON Schema's "integer" takes 4.0 (schemathesis sends it): so does groups."""
        point = GatewayPoint.from_json({**POINT, "item_id": "i", "groups": [6, 4.0, 2.0, 4]})
        self.assertEqual(point.groups, (2, 4, 6))
        self.assertTrue(all(type(g) is int for g in point.groups or ()))

    def test_fractions_booleans_and_out_of_range_are_refused(self) -> None:
        for groups in ([1.5], [True], [0], [17.0], ["3"]):
            with self.assertRaises(ValidationError) as caught:
                GatewayPoint.from_json({**POINT, "item_id": "i", "groups": groups})
            self.assertEqual(caught.exception.field, "groups", groups)
