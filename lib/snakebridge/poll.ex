defmodule SnakeBridge.Poll do
  # How SnakeBridge.call/4 waits for the reply of a call that went to an
  # idle worker (the NIF answered {:alone, ref}): such a reply can come
  # within microseconds.
  #
  # A process that waits in `receive` sleeps, and so does its scheduler
  # thread when it has nothing else to run; the reply then wakes it. On a
  # machine whose idle CPUs halt (most VMs), waking a thread on another
  # CPU costs tens of microseconds: more than a trivial call takes.
  # Polling the mailbox with yields keeps the scheduler awake and lets it
  # see the worker's socket become readable itself: a lone caller's
  # trivial call then takes about as long as a socketpair round trip.
  #
  # On a busy machine it is the other way round. No CPU halts, so wake-ups
  # are quick, and a polling scheduler thread takes CPU time from the
  # worker it waits for. So each process keeps a mode: it polls until a
  # poll misses its reply, then waits in `receive`, and goes back to
  # polling after a few such waits in a row turned out slow (one alone may
  # be a slow call or a busy moment).
  @moduledoc false

  # Absent: polling. A count: waiting, after that many slow waits in a row.
  @mode :"$snakebridge_poll"
  # Longest a poll lasts before the process waits in `receive`.
  @poll_micros 50
  # A wait for a reply longer than this means wake-ups are slow here...
  @slow_wait_micros 20
  # ... when this many come in a row.
  @slow_waits 3

  @doc false
  @spec reply(reference(), timeout(), (reference(), timeout() -> result)) :: result
        when result: term()
  def reply(ref, 0, await), do: await.(ref, 0)

  def reply(ref, timeout, await) do
    if polling?() do
      poll(ref, timeout, await, now() + @poll_micros)
    else
      started = now()
      result = await.(ref, timeout)
      waited(now() - started)
      result
    end
  end

  # The mode, for a process that polls its own way (SnakeBridge.Cluster.Relay
  # polls between its other messages): whether to poll for the next reply...
  @doc false
  @spec polling?() :: boolean()
  def polling?, do: Process.get(@mode) == nil

  # ... for how long...
  @doc false
  @spec poll_micros() :: pos_integer()
  def poll_micros, do: @poll_micros

  # ... that a poll missed its reply...
  @doc false
  @spec missed() :: :ok
  def missed do
    Process.put(@mode, 0)
    :ok
  end

  # ... and how long a reply took that the process waited for.
  @doc false
  @spec waited(non_neg_integer()) :: :ok
  def waited(micros) do
    case Process.get(@mode) do
      nil -> :ok
      slow when micros <= @slow_wait_micros -> slow == 0 || Process.put(@mode, 0)
      slow when slow + 1 < @slow_waits -> Process.put(@mode, slow + 1)
      _slow -> Process.delete(@mode)
    end

    :ok
  end

  defp poll(ref, timeout, await, until) do
    receive do
      {:snakebridge, ^ref, result} -> result
    after
      0 ->
        if now() < until do
          :erlang.yield()
          poll(ref, timeout, await, until)
        else
          missed()
          await.(ref, timeout)
        end
    end
  end

  @doc false
  @spec now() :: integer()
  def now, do: System.monotonic_time(:microsecond)
end
