"""The notification projection: notifications, card alert state and preferences, from the stream.

``core`` is the pure fold (which notifications an event causes); ``postgres`` applies it in one
transaction per fetched batch with a tracking row; ``queries`` reads it (keyset pages, watch
cursors); ``rebuild`` replays the stream into a shadow schema and swaps it in.
"""
