"""battery-gateway: reads the EV battery ECU over CAN and publishes signed battery-passport updates."""

__version__ = "0.1.0"
