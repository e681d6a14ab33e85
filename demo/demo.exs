# A few calls from Elixir into Python: `make demo` (or `mix run demo/demo.exs`).

require Logger
Logger.configure(level: :info)

show = fn label, result -> IO.puts(String.pad_trailing(label, 48) <> " " <> inspect(result)) end

show.(~s|call("math", "sqrt", [2.0])|, SnakeBridge.call("math", "sqrt", [2.0]))
show.(~s|call(:math, :factorial, [30])|, SnakeBridge.call(:math, :factorial, [30]))
show.(~s|call("os.path", "join", ["a", "b"])|, SnakeBridge.call("os.path", "join", ["a", "b"]))

show.(
  ~s|call("builtins", "sorted", [...], kwargs: ...)|,
  SnakeBridge.call("builtins", "sorted", [["pear", "fig", "apple"]],
    kwargs: [key: nil, reverse: true]
  )
)

show.(
  ~s|call("json", "dumps", [%{...}])|,
  SnakeBridge.call("json", "dumps", [%{name: "snake", tags: ["a", "b"], ok: true}],
    kwargs: [sort_keys: true]
  )
)

show.(
  ~s|call("json", "loads", [~s({"a": [1, 2.5, null]})])|,
  SnakeBridge.call("json", "loads", [~s({"a": [1, 2.5, null]})])
)

show.(
  ~s|call("builtins", "set", [[1, 2, 2, 3]])|,
  SnakeBridge.call("builtins", "set", [[1, 2, 2, 3]])
)

show.(
  ~s|call("builtins", "divmod", [2 ** 100, 7])|,
  SnakeBridge.call("builtins", "divmod", [2 ** 100, 7])
)

show.(
  ~s|call("hashlib", "sha256", ...) (unsupported)|,
  SnakeBridge.call("hashlib", "sha256", [SnakeBridge.bytes("abc")])
)

{:error, error} = SnakeBridge.call("operator", "truediv", [1, 0])
show.(~s|call("operator", "truediv", [1, 0])|, Exception.message(error))

show.(
  ~s|call("time", "sleep", [1], timeout: 100)|,
  SnakeBridge.call("time", "sleep", [1], timeout: 100)
)

{micros, results} =
  :timer.tc(fn ->
    1..10_000
    |> Task.async_stream(&SnakeBridge.call!("builtins", "abs", [-&1]), max_concurrency: 200)
    |> Enum.map(fn {:ok, value} -> value end)
  end)

IO.puts("\n10,000 concurrent calls in #{div(micros, 1000)} ms; sum = #{Enum.sum(results)}")
IO.puts("pool: " <> inspect(SnakeBridge.stats(), pretty: true, limit: :infinity))
