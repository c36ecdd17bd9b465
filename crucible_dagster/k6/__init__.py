"""The k6 engine: the driver's input, the SUT transports, and k6 runs read back as measurements."""
