-- A result store (after store_unless_success.lua). KEYS: the result key.
-- ARGV: the encoded meta, its expiry in seconds (0: none).
return store_unless_success(KEYS[1], ARGV[1], ARGV[2])
