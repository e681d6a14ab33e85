defmodule SnakeBridge.Cluster.Supervisor do
  # Started by the application on every node, distributed or not (a node
  # may start distribution later): the :pg scope of clustered pools, the
  # caller side (Client), the pool side (Relay), and the members of
  # clustered pools.
  @moduledoc false

  use Supervisor

  @doc false
  def start_link(arg), do: Supervisor.start_link(__MODULE__, arg, name: __MODULE__)

  @impl true
  def init(_arg) do
    children = [
      %{id: :pg, start: {:pg, :start_link, [SnakeBridge.Cluster.scope()]}},
      SnakeBridge.Cluster.Client,
      SnakeBridge.Cluster.Relay,
      {DynamicSupervisor, name: SnakeBridge.Cluster.Members, strategy: :one_for_one}
    ]

    Supervisor.init(children, strategy: :one_for_one)
  end
end
