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

# The cluster suites run real peer nodes over Erlang distribution on
# loopback: epmd must run (`make test` starts it), and so must distribution.
unless Node.alive?() do
  name = :"snakebridge_test_#{System.os_time()}_#{System.unique_integer([:positive])}@127.0.0.1"

  case :net_kernel.start([name, :longnames]) do
    {:ok, _} ->
      :ok

    {:error, reason} ->
      raise "could not start distribution (is epmd running? `epmd -daemon`): #{inspect(reason)}"
  end
end

# Slow suites can be skipped with `mix test --exclude slow`.
ExUnit.start(capture_log: true)
