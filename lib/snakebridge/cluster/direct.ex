defmodule SnakeBridge.Cluster.Direct do
  # The fast path of a remote call that SnakeBridge itself waits for
  # (SnakeBridge.call/4 and the functions built on it): the caller sends
  # its request straight to the Relay of the chosen node, and the Relay
  # sends a lone reply straight back, so a call costs one distribution
  # round trip and no hop through this node's Client.
  #
  # The call's ref is a monitor of that Relay that is also an alias
  # (reply_demonitor), the way gen_server calls work, which keeps the
  # guarantees of the Client path without it:
  #   * exactly one reply: the runtime handles the reply and the monitor's
  #     DOWN in order; the reply removes the monitor, the DOWN deactivates
  #     the alias, so only the first of them reaches the caller, and
  #     SnakeBridge.await/2 turns a DOWN into :node_down;
  #   * none after a cancel or a timeout: demonitor deactivates the alias,
  #     so the runtime drops any reply still on its way;
  #   * the cancel follows the call on the same pair of processes, so it
  #     reaches the Relay, and Python, after the call it cancels.
  #
  # A call the Relay cannot give a worker (the pool is gone there, or
  # overloaded) is handed to this node's Client, which routes it elsewhere
  # and answers it; a call that could not be sent at all takes the Client
  # path from the start. Calls with several replies (streams) and calls
  # whose replies a user receives (call_async) always take the Client path.
  @moduledoc false

  alias SnakeBridge.Cluster.{Client, Relay}

  # The direct call this process waits for, if any: {ref, node}. A process
  # waits for one call at a time, so one slot is enough.
  @slot {__MODULE__, :call}

  @doc false
  @spec call(node(), tuple(), SnakeBridge.Types.timeout_ms()) :: {:ok, reference()}
  def call(node, request, timeout) do
    ref = :erlang.monitor(:process, {Relay, node}, [{:alias, :reply_demonitor}])

    case :erlang.send({Relay, node}, {:snakebridge_call, ref, self(), request, timeout}, [:noconnect]) do
      :noconnect ->
        Process.demonitor(ref, [:flush])
        Client.call(node, request, timeout)

      _sent ->
        Process.put(@slot, {ref, node})
        {:ok, ref}
    end
  end

  # The reply (or the DOWN) of `ref` was received: a reply the Client
  # relayed for a rerouted call leaves the monitor in place.
  @doc false
  @spec done(reference()) :: :ok
  def done(ref) do
    case Process.get(@slot) do
      {^ref, _node} ->
        Process.delete(@slot)
        Process.demonitor(ref, [:flush])
        :ok

      _other ->
        :ok
    end
  end

  # Cancels a direct call: :unknown, since whatever reply came before the
  # cancel is in the mailbox and nothing comes after it; :not_direct when
  # `ref` is not the direct call of this process.
  @doc false
  @spec cancel(reference(), :cancel | :timeout) :: :unknown | :not_direct
  def cancel(ref, why) do
    case Process.get(@slot) do
      {^ref, node} ->
        Process.delete(@slot)

        if Process.demonitor(ref, [:flush, :info]) do
          :erlang.send({Relay, node}, {:snakebridge_cancel, ref, why}, [:noconnect])
          # A call the Relay handed to the Client is the Client's to cancel.
          _ = Client.cancel(ref, why)
        end

        :unknown

      _other ->
        :not_direct
    end
  end
end
