defmodule SnakeBridge.Stream do
  # The consumer side of SnakeBridge.stream/4: a Stream.resource that
  # receives a Python iterator's items and grants the worker credit as they
  # are consumed.
  #
  # The worker may send `window` items before it is granted more. Items
  # arrive in batches, `{:snakebridge_stream, ref, items}`, and the stream
  # ends with the call's one reply, `{:snakebridge, ref, result}`. A batch is
  # consumed by the time the consumer asks for the next one, so credit for it
  # is granted then, once at least half a window is owed: the worker never
  # has more than `window` items produced and not yet consumed, and credit
  # costs one message per half window.
  @moduledoc false

  alias SnakeBridge.{Error, NIF, Output}

  defstruct [:ref, :window, :timeout, owed: 0, last: 0, done: false]

  @doc false
  def new(start, window, timeout) do
    Stream.resource(
      fn ->
        case start.() do
          {:ok, ref} -> %__MODULE__{ref: ref, window: window, timeout: timeout}
          {:error, error} -> raise error
        end
      end,
      &next/1,
      &close/1
    )
  end

  defp next(%__MODULE__{done: true} = state), do: {:halt, state}

  defp next(%__MODULE__{ref: ref} = state) do
    state = grant(state)

    receive do
      {:snakebridge_stream, ^ref, items} ->
        {items, %{state | last: length(items)}}

      # Printed by the generator, with `output: :caller`: written in its
      # place among the items.
      {:snakebridge_output, ^ref, _device, line} ->
        Output.write(line)
        next(state)

      {:snakebridge, ^ref, {:ok, _}} ->
        {:halt, %{state | done: true}}

      {:snakebridge, ^ref, {:error, error}} ->
        raise error
    after
      state.timeout ->
        close(state)

        raise Error,
          reason: :timeout,
          message: "Python stream sent no item within #{state.timeout} ms and was closed",
          details: %{timeout: state.timeout}
    end
  end

  defp grant(%__MODULE__{owed: owed, last: last, window: window} = state) do
    owed = owed + last

    if owed >= max(div(window, 2), 1) do
      # :closed when the stream already ended: its last reply is on its way.
      # :closed too for a stream of another node's pool.
      with :closed <- NIF.stream_credit(state.ref, owed),
           do: SnakeBridge.Cluster.stream_credit(state.ref, owed)

      %{state | owed: 0, last: 0}
    else
      %{state | owed: owed, last: 0}
    end
  end

  # Closes the iterator in Python (a cancel, which runs its `finally`) unless
  # it already ended, and leaves no message of the stream in the mailbox:
  # once the cancel is done, every item sent is in the mailbox (items come
  # before the final reply, which the cancel waits for or rules out).
  defp close(%__MODULE__{done: true}), do: :ok

  defp close(%__MODULE__{ref: ref}) do
    SnakeBridge.cancel(ref)
    flush_items(ref)
  end

  defp flush_items(ref) do
    receive do
      {:snakebridge_stream, ^ref, _} -> flush_items(ref)
    after
      0 -> :ok
    end
  end
end
