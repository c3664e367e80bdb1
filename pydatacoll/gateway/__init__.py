"""The northbound gateway: PyDataColl as an IEC 104 controlled station for a control centre."""
