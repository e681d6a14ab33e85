defmodule SnakeBridge.TestLogHandler do
  @moduledoc false
  # An Erlang :logger handler that sends the events of one pool to a test
  # process, metadata and all (the console only prints configured keys).

  @doc "Adds a handler sending `{:log, level, message, metadata}` for `pool`'s events to the caller."
  def attach(pool) do
    id = :"sb_test_log_#{System.unique_integer([:positive])}"
    :ok = :logger.add_handler(id, __MODULE__, %{config: %{pid: self(), pool: pool}})
    ExUnit.Callbacks.on_exit(fn -> :logger.remove_handler(id) end)
    id
  end

  def log(%{level: level, msg: msg, meta: meta}, %{config: %{pid: pid, pool: pool}}) do
    if meta[:pool] == pool, do: send(pid, {:log, level, text(msg), meta})
  end

  defp text({:string, chardata}), do: IO.chardata_to_string(chardata)
  defp text({:report, report}), do: inspect(report)
  defp text({format, args}), do: IO.chardata_to_string(:io_lib.format(format, args))
end
