defmodule SnakeBridge.ClusterHelpers do
  @moduledoc false
  # Real peer nodes on loopback for the cluster suites: each runs the
  # :snakebridge application from this project's code paths, so the NIF
  # loads there too. Peers are controlled over their standard I/O, not over
  # distribution, so that a test can disconnect one and connect it again.

  import SnakeBridge.TestHelpers

  @doc "Starts a peer node connected to this one, with SnakeBridge running."
  def start_peer(prefix) do
    name = :"#{prefix}_#{System.unique_integer([:positive])}"
    paths = Enum.flat_map(:code.get_path(), &[~c"-pa", &1])
    cookie = ~c"#{Node.get_cookie()}"

    {:ok, peer, node} =
      :peer.start(%{
        name: name,
        host: ~c"127.0.0.1",
        longnames: true,
        connection: :standard_io,
        # Peers do not connect to each other: a test that disconnects one
        # from this node must not make `global` drop the others.
        args: paths ++ [~c"-setcookie", cookie, ~c"-connect_all", ~c"false"]
      })

    :ok = :peer.call(peer, Application, :put_env, [:snakebridge, :default_pool, false])
    # A peer's logs reach this node's console, outside capture_log.
    :ok = :peer.call(peer, :logger, :set_primary_config, [:level, :warning])
    {:ok, _} = :peer.call(peer, Application, :ensure_all_started, [:snakebridge])
    true = Node.connect(node)
    {peer, node}
  end

  @doc "Starts a clustered pool `name` on a peer, under its SnakeBridge supervisor."
  def start_pool(peer, name, opts \\ []) do
    opts = pool_opts(name, Keyword.merge([cluster: [gossip_interval: 20]], opts))

    {:ok, _} =
      :peer.call(peer, Supervisor, :start_child, [SnakeBridge.Supervisor, {SnakeBridge.Pool, opts}])

    :ok
  end

  @doc "Waits until this node sees `pool` running on `node`, with a published load."
  def wait_for_member(pool, node) do
    wait_until(fn ->
      match?(%{^node => %{size: size}} when is_integer(size), SnakeBridge.Cluster.stats(pool))
    end)
  end

  @doc "Stops a peer node, if it still runs."
  def stop_peer(peer) do
    :peer.stop(peer)
  catch
    :exit, _ -> :ok
  end
end
