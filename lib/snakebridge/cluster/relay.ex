defmodule SnakeBridge.Cluster.Relay do
  # The pool side of remote calls, one per node: runs the calls other
  # nodes' Clients send it in the pools of this node, as their caller, and
  # relays each reply (a NIF can only send to local processes) back to the
  # Client of the caller's node, batched per node: everything that arrived
  # while it was busy goes in one message.
  #
  # Objects in a reply are exported as handles (SnakeBridge.Cluster.Handles)
  # held for the process that made the call; handles in a request are
  # resolved back to the objects. A cancel from the caller's node cancels
  # the call here as a local cancel does, so Python is interrupted; a call
  # whose caller's node went down is cancelled, and so is a stream whose
  # consumer exited.
  #
  # A call that went to an idle worker may answer within microseconds, and
  # on a machine whose idle CPUs halt, the wake-up of a sleeping scheduler
  # would cost more than that. So the relay polls its mailbox, with yields,
  # for up to SnakeBridge.Poll's window after such a call, handling every
  # message that comes meanwhile; it keeps the same per-process mode as
  # SnakeBridge.call/4 (polls until a poll misses, then waits until waits
  # turn out slow).
  @moduledoc false

  use GenServer

  alias SnakeBridge.Cluster.{Handles, Outbox, Router}
  alias SnakeBridge.{Error, Native, NIF, Object, Poll}

  # Errors that mean the call never reached a worker: the caller's node may
  # send it elsewhere.
  @reroute [:pool_not_found, :overloaded]

  # calls: local ref => {client, ref, caller, monitor of a stream's caller}
  # streams: how many of the calls are streams
  # refs: {client, ref} => local ref
  # holders: holder pid => {monitor, objects held}
  # alone: local ref of a call that went to an idle worker => :polled while
  #   the relay polls for its reply, :missed once that poll gave up, or the
  #   monotonic µs it was sent at when the relay waits instead
  # poll_until: the monotonic µs the current poll ends at, nil when none
  defstruct calls: %{},
            streams: 0,
            refs: %{},
            holders: %{},
            alone: %{},
            poll_until: nil,
            out: Outbox.new()

  @doc false
  def start_link(_arg), do: GenServer.start_link(__MODULE__, [], name: __MODULE__)

  @doc false
  @spec held_objects() :: non_neg_integer()
  def held_objects, do: Handles.count()

  @impl true
  def init([]) do
    Handles.create_tables()
    :ok = :net_kernel.monitor_nodes(true)
    {:ok, %__MODULE__{}}
  end

  @impl true
  def handle_info({:snakebridge_requests, client, ops}, state) do
    noreply(Enum.reduce(ops, state, &run(client, &1, &2)))
  end

  def handle_info({:snakebridge, local_ref, result}, state) do
    case Map.pop(state.calls, local_ref) do
      {nil, _} ->
        noreply(state)

      {{client, ref, caller, monitor}, calls} ->
        state = forget_stream(state, monitor)
        {result, state} = export(result, caller, state)
        state = %{state | calls: calls, refs: Map.delete(state.refs, {client, ref})}
        noreply(queue(answered(state, local_ref), client, {:reply, ref, result}))
    end
  end

  def handle_info({:snakebridge_stream, local_ref, items}, state) do
    case state.calls do
      %{^local_ref => {client, ref, caller, _}} ->
        {items, state} = export(items, caller, state)
        noreply(queue(state, client, {:items, ref, items}))

      _cancelled ->
        noreply(state)
    end
  end

  # What a call with `output: :caller` prints goes to its caller, ahead of
  # the reply, as for a local call.
  def handle_info({:snakebridge_output, local_ref, device, line}, state) do
    case state.calls do
      %{^local_ref => {client, ref, _caller, _}} ->
        noreply(queue(state, client, {:output, ref, device, line}))

      _cancelled ->
        noreply(state)
    end
  end

  def handle_info({:DOWN, monitor, :process, pid, _reason}, state) do
    state =
      case state.holders do
        %{^pid => {^monitor, _count}} ->
          Handles.release_holder(pid)
          %{state | holders: Map.delete(state.holders, pid)}

        _ ->
          state
      end

    # A stream's consumer is gone: nothing will grant the generator credit.
    streams = for {local_ref, {_, _, _, ^monitor}} <- state.calls, do: local_ref
    noreply(Enum.reduce(streams, state, &cancel_local(&2, &1, :cancel)))
  end

  def handle_info({:nodeup, _node}, state), do: noreply(state)

  def handle_info({:nodedown, node}, state) do
    orphans = for {local_ref, {client, _, _, _}} <- state.calls, node(client) == node, do: local_ref
    state = Enum.reduce(orphans, state, &cancel_local(&2, &1, :cancel))
    {_dropped, out} = Outbox.drop(state.out, &(node(&1) == node))
    noreply(%{state | out: out})
  end

  def handle_info(:timeout, state), do: noreply(state |> flush() |> poll())

  @impl true
  def handle_call({:os_pid, handle}, _from, state) do
    os_pid =
      case Handles.object(handle) do
        nil -> nil
        object -> NIF.object_os_pid(object.ref)
      end

    {:reply, os_pid, state, timeout(state)}
  end

  ## Requests

  defp run(client, {:call, ref, caller, request, timeout}, state) do
    with {:ok, request} <- Handles.import(request),
         request = follow_objects(request, caller, state),
         {sent, local_ref} when sent in [:ok, :alone] <- submit(request, timeout, state) do
      monitor = if Native.stream?(request), do: Process.monitor(caller)

      state = %{
        state
        | calls: Map.put(state.calls, local_ref, {client, ref, caller, monitor}),
          streams: if(monitor, do: state.streams + 1, else: state.streams),
          refs: Map.put(state.refs, {client, ref}, local_ref)
      }

      if sent == :alone, do: alone(state, local_ref), else: state
    else
      {:error, %Error{reason: reason} = error} when reason in @reroute ->
        queue(state, client, {:reroute, ref, error})

      {:error, error} ->
        queue(state, client, {:reply, ref, {:error, error}})
    end
  end

  defp run(client, {:cancel, ref, why}, state) do
    case Map.fetch(state.refs, {client, ref}) do
      {:ok, local_ref} -> cancel_local(state, local_ref, why)
      :error -> state
    end
  end

  defp run(client, {:credit, ref, n}, state) do
    with {:ok, local_ref} <- Map.fetch(state.refs, {client, ref}) do
      _ok_or_closed = NIF.stream_credit(local_ref, n)
    end

    state
  end

  defp run(_client, {:release, handle}, state) do
    case Handles.release(handle) do
      nil -> state
      holder -> drop_holds(state, holder, 1)
    end
  end

  # From a client of a later version, during a rolling upgrade: crashing
  # here would lose every call and object the relay holds.
  defp run(_client, _unknown_op, state), do: state

  # A process's calls follow its objects, as they do locally: a call that
  # names no object and no `:worker` runs in the worker of an object of its
  # pool that the caller holds here (and whose worker still runs), so that
  # objects made one after another can be used together. The relay's own
  # calls follow nobody's objects (see Native.spread/1), and neither do
  # calls that ask to spread (a session's anchor).
  defp follow_objects({pool, target, _, _, _, _, nil} = request, caller, state)
       when not is_struct(target, Object) do
    with true <- Map.has_key?(state.holders, caller),
         false <- Native.spread?(request),
         {:ok, nil} <- Router.pinned_node(request),
         %Object{ref: ref} <- Handles.live_in(caller, pool) do
      put_elem(request, 6, ref)
    else
      _ -> request
    end
  end

  defp follow_objects(request, _caller, _state), do: request

  # With other calls running, this one is part of a burst: its worker then
  # polls only briefly for the next (a lone caller's next call comes a
  # round trip later, and there a longer poll saves a wake-up). Open
  # streams do not count: a consumer calling per item is a lone caller.
  defp submit(request, timeout, state) do
    request = Native.spread(request)
    request = if Native.stream?(request), do: request, else: Native.ask_alone(request)
    request = if map_size(state.calls) > state.streams, do: Native.in_burst(request), else: request
    Native.submit_local(request, timeout)
  end

  # The reply, if one is on its way, finds no call and is dropped (with any
  # objects in it, which the garbage collector then releases).
  defp cancel_local(state, local_ref, why) do
    case Map.pop(state.calls, local_ref) do
      {nil, _} ->
        state

      {{client, ref, _caller, monitor}, calls} ->
        state = forget_stream(state, monitor)

        _outcome =
          if why == :timeout, do: NIF.cancel(local_ref, :timeout), else: NIF.cancel(local_ref)

        state = %{state | calls: calls, refs: Map.delete(state.refs, {client, ref})}
        answered(state, local_ref)
    end
  end

  defp forget_stream(state, nil), do: state

  defp forget_stream(state, monitor) do
    Process.demonitor(monitor, [:flush])
    %{state | streams: state.streams - 1}
  end

  ## Polling

  defp alone(state, local_ref) do
    if Poll.polling?() do
      until = Poll.now() + Poll.poll_micros()
      %{state | alone: Map.put(state.alone, local_ref, :polled), poll_until: until}
    else
      %{state | alone: Map.put(state.alone, local_ref, Poll.now())}
    end
  end

  defp answered(state, local_ref) do
    case Map.pop(state.alone, local_ref) do
      {nil, _} ->
        state

      {:polled, alone} ->
        polled? = Enum.any?(alone, fn {_ref, sent} -> sent == :polled end)
        %{state | alone: alone, poll_until: if(polled?, do: state.poll_until)}

      {:missed, alone} ->
        %{state | alone: alone}

      {sent_at, alone} ->
        Poll.waited(Poll.now() - sent_at)
        %{state | alone: alone}
    end
  end

  # Runs when the mailbox is empty.
  defp poll(%{poll_until: nil} = state), do: state

  defp poll(state) do
    if Poll.now() < state.poll_until do
      :erlang.yield()
      state
    else
      Poll.missed()
      alone = Map.new(state.alone, fn {ref, sent} -> {ref, missed(sent)} end)
      %{state | alone: alone, poll_until: nil}
    end
  end

  defp missed(:polled), do: :missed
  defp missed(sent), do: sent

  ## Objects

  defp export(term, caller, state) do
    case Handles.export(term, caller) do
      {term, 0} -> {term, state}
      {term, n} -> {term, add_holds(state, caller, n)}
    end
  end

  defp add_holds(state, holder, n) do
    holders =
      Map.update(state.holders, holder, {Process.monitor(holder), n}, fn {monitor, count} ->
        {monitor, count + n}
      end)

    %{state | holders: holders}
  end

  defp drop_holds(state, holder, n) do
    case state.holders do
      %{^holder => {monitor, count}} when count <= n ->
        Process.demonitor(monitor, [:flush])
        %{state | holders: Map.delete(state.holders, holder)}

      %{^holder => {monitor, count}} ->
        %{state | holders: Map.put(state.holders, holder, {monitor, count - n})}

      _ ->
        state
    end
  end

  ## Sending

  defp queue(state, client, op) do
    state = %{state | out: Outbox.put(state.out, client, op)}
    if Outbox.full?(state.out), do: flush(state), else: state
  end

  # A client whose node is gone drops its replies; its calls got :node_down.
  defp flush(state) do
    {batches, out} = Outbox.take(state.out)

    for {client, ops} <- batches do
      :erlang.send(client, {:snakebridge_replies, ops}, [:noconnect])
    end

    %{state | out: out}
  end

  # A poll is a GenServer timeout of 0: the mailbox is checked, and every
  # message handled, between yields.
  defp noreply(state), do: {:noreply, state, timeout(state)}

  defp timeout(%{poll_until: nil} = state), do: Outbox.timeout(state.out)
  defp timeout(_polling), do: 0
end
