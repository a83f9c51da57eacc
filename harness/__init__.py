"""Parity harness for Wan 2.2 I2V A14B LoRAs trained with ostris/ai-toolkit."""

__version__ = "0.1.0"
