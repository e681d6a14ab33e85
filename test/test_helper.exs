# Fail fast, with a clear message, when the NIF did not load: every test
# below would fail anyway, each with a less helpful error.
Code.ensure_loaded!(SnakeBridge.NIF)

try do
  SnakeBridge.NIF.cancel(make_ref())
rescue
  error ->
    raise "SnakeBridge.NIF is not usable (#{Exception.message(error)}); run `mix compile` first"
end

unless File.regular?(
         Application.app_dir(:snakebridge, "priv/python/snakebridge_worker/_native.abi3.so")
       ) do
  raise "the Python worker is not installed in priv/python; run `mix compile` first"
end

# Slow suites can be skipped with `mix test --exclude slow`.
ExUnit.start(capture_log: true)
