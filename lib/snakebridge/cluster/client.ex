defmodule SnakeBridge.Cluster.Client do
  # The caller side of remote calls, one per node. Callers hand it their
  # calls; it sends them to the Relay of the chosen node, batched per node
  # (everything that arrived while it was busy goes in one message), and
  # hands each reply that comes back to its caller.
  #
  # It holds every remote call of this node until its reply, which is what
  # keeps the guarantees of a local call:
  #   * exactly one reply: a reply, a cancel and a node going down each
  #     take the call out of `pending`, and only the one that finds it there
  #     sends anything to the caller;
  #   * none after cancel/1 or a timeout: a cancel is a call to this
  #     process, so when it answers, any reply it passed on before is
  #     already in the caller's mailbox, and none will follow;
  #   * no hang when a node goes down: the calls pending there get
  #     :node_down as soon as distribution reports the node gone; calls
  #     still waiting here to be sent go to another node instead.
  #
  # It also owns the routing table (SnakeBridge.Cluster.Router) and fills it
  # with the loads other nodes publish.
  @moduledoc false

  use GenServer

  alias SnakeBridge.Cluster.{Outbox, Relay, Router}
  alias SnakeBridge.Error

  # How long a cancel may wait for this process before giving up on it.
  @cancel_timeout 30_000

  @clients {__MODULE__, :clients}

  defstruct pending: %{}, out: Outbox.new()

  @doc false
  def start_link(_arg), do: GenServer.start_link(__MODULE__, [], name: __MODULE__)

  @doc false
  def call(node, request, timeout) do
    ref = make_ref()
    send(__MODULE__, {:call, self(), ref, node, request, timeout})
    {:ok, ref}
  end

  @doc false
  def cancel(ref, why) do
    if Process.whereis(__MODULE__) do
      GenServer.call(__MODULE__, {:cancel, ref, why}, @cancel_timeout)
    else
      :unknown
    end
  catch
    :exit, _ -> :unknown
  end

  @doc false
  def credit(ref, n) do
    send(__MODULE__, {:credit, ref, n})
    :ok
  end

  # Through this process, so that the release reaches the object's node
  # after the calls made before it.
  @doc false
  def release(handle) do
    send(__MODULE__, {:release, handle})
    :ok
  end

  @doc false
  def os_pid(handle) do
    GenServer.call({Relay, node(handle)}, {:os_pid, handle}, 5_000)
  catch
    :exit, _ -> nil
  end

  # Sends `message` to the Client of every other node.
  @doc false
  def broadcast(message) do
    for pid <- :pg.get_members(SnakeBridge.Cluster.scope(), @clients), node(pid) != node() do
      :erlang.send(pid, message, [:noconnect])
    end

    :ok
  end

  ## GenServer

  @impl true
  def init([]) do
    Router.create_table()
    :ok = :net_kernel.monitor_nodes(true)
    :ok = :pg.join(SnakeBridge.Cluster.scope(), @clients, self())
    {:ok, %__MODULE__{}}
  end

  @impl true
  def handle_info({:call, caller, ref, node, request, timeout}, state) do
    pending = Map.put(state.pending, ref, {caller, node, request, timeout, [node]})
    noreply(queue(%{state | pending: pending}, node, {:call, ref, caller, request, timeout}))
  end

  def handle_info({:snakebridge_replies, ops}, state) do
    noreply(Enum.reduce(ops, state, &receive_op/2))
  end

  def handle_info({:credit, ref, n}, state) do
    case state.pending do
      %{^ref => {_caller, node, _, _, _}} -> noreply(queue(state, node, {:credit, ref, n}))
      _ -> noreply(state)
    end
  end

  def handle_info({:release, handle}, state) do
    noreply(queue(state, node(handle), {:release, handle}))
  end

  def handle_info({:snakebridge_load, pool, node, load}, state) do
    Router.put_load(pool, node, load)
    noreply(state)
  end

  def handle_info({:nodeup, _node}, state), do: noreply(state)

  def handle_info({:nodedown, node}, state) do
    Router.delete_node(node)
    {unsent, out} = Outbox.drop(state.out, &(&1 == node))
    state = %{state | out: out}
    # What was never sent goes elsewhere; what was sent may have run.
    state = reroute_unsent(state, node, unsent)

    {down, pending} =
      Enum.split_with(state.pending, fn {_ref, {_, call_node, _, _, _}} -> call_node == node end)

    for {ref, {caller, _, _, _, _}} <- down do
      send(caller, {:snakebridge, ref, {:error, node_down(node)}})
    end

    noreply(%{state | pending: Map.new(pending)})
  end

  def handle_info(:timeout, state), do: noreply(flush(state))

  @impl true
  def handle_call({:cancel, ref, why}, _from, state) do
    case Map.pop(state.pending, ref) do
      {nil, _} ->
        {:reply, :unknown, state, Outbox.timeout(state.out)}

      {{_caller, node, _, _, _}, pending} ->
        state = queue(%{state | pending: pending}, node, {:cancel, ref, why})
        {:reply, :cancelled, state, Outbox.timeout(state.out)}
    end
  end

  ## Replies from relays

  defp receive_op({:reply, ref, result}, state) do
    case Map.pop(state.pending, ref) do
      {nil, _} ->
        state

      {{caller, _, _, _, _}, pending} ->
        send(caller, {:snakebridge, ref, result})
        %{state | pending: pending}
    end
  end

  defp receive_op({:items, ref, items}, state) do
    case state.pending do
      %{^ref => {caller, _, _, _, _}} -> send(caller, {:snakebridge_stream, ref, items})
      _ -> :ok
    end

    state
  end

  defp receive_op({:output, ref, device, line}, state) do
    case state.pending do
      %{^ref => {caller, _, _, _, _}} -> send(caller, {:snakebridge_output, ref, device, line})
      _ -> :ok
    end

    state
  end

  # The relay did not give the call to a worker (no such pool there any
  # more, or a full queue): another node may take it.
  defp receive_op({:reroute, ref, error}, state) do
    case Map.fetch(state.pending, ref) do
      {:ok, _} -> reroute(state, ref, error)
      :error -> state
    end
  end

  # From a relay of a later version, during a rolling upgrade: crashing
  # here would lose every call this node has pending.
  defp receive_op(_unknown_op, state), do: state

  ## Sending

  defp queue(state, node, op) do
    state = %{state | out: Outbox.put(state.out, node, op)}
    if Outbox.full?(state.out), do: flush(state), else: state
  end

  defp flush(state) do
    {batches, out} = Outbox.take(state.out)

    Enum.reduce(batches, %{state | out: out}, fn {node, ops}, state ->
      message = {:snakebridge_requests, self(), ops}

      case :erlang.send({Relay, node}, message, [:noconnect]) do
        :noconnect -> reroute_unsent(state, node, ops)
        _sent -> state
      end
    end)
  end

  defp reroute_unsent(state, node, ops) do
    Enum.reduce(ops, state, fn
      {:call, ref, _caller, _request, _timeout}, state ->
        if Map.has_key?(state.pending, ref), do: reroute(state, ref, node_down(node)), else: state

      _cancel_credit_or_release, state ->
        state
    end)
  end

  # To the least loaded node that has not had the call yet; a call pinned to
  # a node by its objects has nowhere else to go.
  defp reroute(state, ref, error) do
    {caller, _node, request, timeout, tried} = Map.fetch!(state.pending, ref)
    pool = elem(request, 0)

    candidates =
      case Router.pinned_node(request) do
        {:ok, nil} -> Router.nodes(pool) -- [node() | tried]
        _pinned -> []
      end

    case Router.pick(pool, candidates) do
      nil ->
        send(caller, {:snakebridge, ref, {:error, error}})
        %{state | pending: Map.delete(state.pending, ref)}

      node ->
        pending = Map.put(state.pending, ref, {caller, node, request, timeout, [node | tried]})
        queue(%{state | pending: pending}, node, {:call, ref, caller, request, timeout})
    end
  end

  defp noreply(state), do: {:noreply, state, Outbox.timeout(state.out)}

  defp node_down(node) do
    %Error{
      reason: :node_down,
      message: "node #{inspect(node)} went down or disconnected before the call answered",
      details: %{node: node}
    }
  end
end
