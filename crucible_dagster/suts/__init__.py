"""SUT families: how to reach each one, what identifies it, and how it runs a query."""
