"""jetledger CLI."""


def main() -> None: ...
