"""chatbot: a Matrix bot that runs open-source team meetings."""

__version__ = "0.1.0"
