"""IEC 60870-5-104 controlling station (master): pure codecs, link protocol, services.

``apci`` and ``asdu`` are pure (bytes in, values out); ``link`` is the Twisted protocol
shared by our master (``client``) and our RTU simulator (``pydatacoll.testing.iec104_sim``).
"""
