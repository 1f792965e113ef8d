"""Command intake shared by the card and transaction services: decide on exact state, append
atomically with an outcome marker, replay the original outcome on retries."""

from services.intake.handler import CommandHandler, CommandOutcome, IntakeMetrics

__all__ = ["CommandHandler", "CommandOutcome", "IntakeMetrics"]
