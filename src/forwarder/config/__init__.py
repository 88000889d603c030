"""The one validated ``Settings``: its schema, the parsers of its values, and their masking."""
