defmodule SnakeBridge.Cluster.Member do
  # A clustered pool's member of its :pg group, one per pool on each node
  # that runs it. Every `gossip_interval` ms it reads the pool's load and
  # publishes it to this node's routing table and to the Client of every
  # other node, so that callers choose a node without asking. It leaves the
  # group when its pool process exits.
  @moduledoc false

  use GenServer, restart: :transient

  alias SnakeBridge.Cluster.{Client, Router}
  alias SnakeBridge.NIF

  @doc false
  def start(pool, pool_pid, size, opts) do
    spec = {__MODULE__, {pool, pool_pid, size, opts}}
    DynamicSupervisor.start_child(SnakeBridge.Cluster.Members, spec)
  end

  @doc false
  def start_link(arg), do: GenServer.start_link(__MODULE__, arg)

  @impl true
  def init({pool, pool_pid, size, opts}) do
    Process.monitor(pool_pid)
    opts = Map.update!(opts, :overload, &(&1 || 2 * size))
    Router.put_config(pool, opts)
    :ok = :pg.join(SnakeBridge.Cluster.scope(), pool, self())
    {:ok, %{pool: pool, opts: opts}, {:continue, :publish}}
  end

  @impl true
  def handle_continue(:publish, state) do
    publish(state)
    Process.send_after(self(), :publish, state.opts.gossip_interval)
    {:noreply, state}
  end

  @impl true
  def handle_info(:publish, state), do: {:noreply, state, {:continue, :publish}}

  def handle_info({:DOWN, _ref, :process, _pool_pid, _reason}, state) do
    {:stop, :normal, state}
  end

  @impl true
  def terminate(_reason, state) do
    Router.delete_config(state.pool)
  end

  defp publish(%{pool: pool}) do
    case NIF.stats(pool) do
      {:ok, stats} ->
        load = %{
          size: stats.size,
          queue_length: stats.queue_length,
          in_flight: Enum.reduce(stats.workers, 0, &(&1.in_flight + &2))
        }

        Router.put_load(pool, node(), load)
        Client.broadcast({:snakebridge_load, pool, node(), load})

      # Between the pool's exit and its DOWN message.
      {:error, _} ->
        :ok
    end
  end
end
