defmodule SnakeBridge.Output do
  # The caller's side of `output: :caller`: the lines a call prints arrive
  # as `{:snakebridge_output, ref, device, line}` messages ahead of its
  # reply (the reader sends both, in order), and whoever receives the reply
  # writes them first to its group leader, so they show where the caller's
  # own `IO.puts` would: a Livebook cell, `capture_io`, the shell.
  @moduledoc false

  @doc false
  @spec write(binary()) :: :ok
  def write(line), do: IO.write(Process.group_leader(), [line, ?\n])

  # Writes the output of `ref` already in the mailbox: after a cancel, no
  # more comes (the runtime claims each line as it claims a stream's items).
  @doc false
  @spec flush(reference()) :: :ok
  def flush(ref) do
    receive do
      {:snakebridge_output, ^ref, _device, line} ->
        write(line)
        flush(ref)
    after
      0 -> :ok
    end
  end

  # The end of a wait of `wait` milliseconds from now, and what is left of it.
  @doc false
  def deadline(:infinity), do: :infinity
  def deadline(wait), do: System.monotonic_time(:millisecond) + wait

  @doc false
  def left(:infinity), do: :infinity
  def left(deadline), do: max(deadline - System.monotonic_time(:millisecond), 0)
end
