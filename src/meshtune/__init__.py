"""meshtune: fine-tune, export and prove small chat models for Meshtastic mesh bots."""

__version__ = "0.1.0"
