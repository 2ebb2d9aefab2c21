"""uid2-operator: a UID2 Operator Service and the credential system behind it."""

__version__ = "0.1.0"
