defmodule SnakeBridge.Cluster do
  @moduledoc """
  Pools shared across a cluster of BEAM nodes connected by Erlang
  distribution.

  A pool started with the `:cluster` option (see `SnakeBridge.Pool`) joins
  the `:pg` group of its name in the scope `SnakeBridge.Cluster`, which the
  application starts on every node. From then on, on any connected node
  running SnakeBridge, `SnakeBridge.call/4`, `SnakeBridge.Native.call_async/4`,
  `SnakeBridge.stream/4` and the object functions accept that pool name,
  whether or not the node has a pool of that name itself:

      # on node a@host, with Python:
      {SnakeBridge.Pool, name: :ml, size: 8, cluster: true}

      # on node b@host, with no pool :ml:
      SnakeBridge.call("my_model", "predict", [[1.0, 2.0]], pool: :ml)

  Each node's member of the group publishes its pool's load (queued and
  running calls) to every node a few times a second, so choosing a node
  costs no round trip. The reply comes back as the same single message
  `{:snakebridge, ref, result}`, relayed by the worker's node, with replies
  to one node batched under load.

  See the "Clusters" section of the README for the routing strategies,
  the failure cases and what an object's lifetime means across nodes.
  """

  alias SnakeBridge.Cluster.{Client, Member, Router}
  alias SnakeBridge.{Error, Object}

  @scope __MODULE__

  @typedoc "A routing strategy; see the `:cluster` option of `SnakeBridge.Pool`."
  @type strategy :: :local_first | :least_loaded

  @typedoc "An option of a pool's `:cluster` option."
  @type option ::
          {:strategy, strategy()}
          | {:overload, pos_integer()}
          | {:gossip_interval, pos_integer()}

  @defaults [strategy: :local_first, overload: nil, gossip_interval: 100]

  @doc false
  @spec scope() :: atom()
  def scope, do: @scope

  @doc """
  The cluster view of a pool: for each node with a member of the pool's
  group, its last published load.

  Each value is a map with `:size`, `:queue_length`, `:in_flight` (calls
  written to its workers and not answered) and `:age_ms` (how long ago the
  load was published, this node's own pool included). A node that
  joined but has not published yet shows `nil` for the counts. Returns an
  empty map for a pool that no node shares. Raises `ArgumentError` when
  `pool` is not an atom.

  ## Examples

      SnakeBridge.Cluster.stats(:ml)
      #=> %{:"a@127.0.0.1" => %{size: 8, queue_length: 0, in_flight: 3, age_ms: 40}, ...}
  """
  @spec stats(SnakeBridge.Types.pool()) :: %{node() => map()}
  def stats(pool) do
    pool = SnakeBridge.Args.pool!(pool)
    Map.new(Router.nodes(pool), fn node -> {node, Router.load_view(pool, node)} end)
  end

  ## Hooks of the call path (SnakeBridge, SnakeBridge.Native, SnakeBridge.Stream)

  # Routes a checked request: nil when it runs in a pool of this node (the
  # caller then submits it to the NIF), else the answer of a remote
  # submission.
  @doc false
  @spec submit(tuple(), SnakeBridge.Types.timeout_ms()) ::
          nil | {:ok, reference()} | {:error, Error.t()}
  def submit(request, timeout) do
    case Router.route(request) do
      :local -> nil
      {:remote, node} -> Client.call(node, request, timeout)
      {:error, _} = error -> error
    end
  end

  # The error for a call that did not leave this node although objects of
  # another node pin it there: routing follows objects only within their
  # own pool, and the call names another. nil when no such object pins it.
  @doc false
  @spec misrouted(tuple()) :: nil | {:error, Error.t()}
  def misrouted({pool, _target, _function, _args, _kwargs, _mode, _near} = request) do
    case Router.pinned_node(request) do
      {:ok, node} when node not in [nil, node()] ->
        {:error,
         %Error{
           reason: :handle_conflict,
           message:
             "the call goes to pool #{inspect(pool)}, but its objects (or its :worker) live in " <>
               "a pool of node #{inspect(node)}; objects never leave their pool: pass `pool:` of theirs",
           details: %{node: node}
         }}

      {:error, _} = error ->
        error

      _none ->
        nil
    end
  end

  # Cancels a remote call: :cancelled, or :unknown when its reply was already
  # delivered to the caller's mailbox (or it never was a remote call).
  @doc false
  @spec cancel(reference(), :cancel | :timeout) :: :cancelled | :unknown
  def cancel(ref, why), do: Client.cancel(ref, why)

  @doc false
  @spec stream_credit(reference(), pos_integer()) :: :ok
  def stream_credit(ref, n), do: Client.credit(ref, n)

  # An object whose Python object lives on another node: its ref was made
  # there, by the node that holds the object for this one.
  @doc false
  @spec remote_object?(Object.t()) :: boolean()
  def remote_object?(%Object{ref: ref}), do: node(ref) != node()

  @doc false
  @spec release(Object.t()) :: :ok
  def release(%Object{ref: ref}), do: Client.release(ref)

  @doc false
  @spec os_pid(Object.t()) :: pos_integer() | nil
  def os_pid(%Object{ref: ref}), do: Client.os_pid(ref)

  ## Pool option

  # Checks a pool's :cluster option: nil (not clustered) or a map.
  @doc false
  @spec options!(term()) :: nil | map()
  def options!(false), do: nil
  def options!(true), do: options!([])

  def options!(opts) when is_list(opts) do
    opts = SnakeBridge.Args.sub_opts!(opts, @defaults, :cluster)

    unless opts[:strategy] in [:local_first, :least_loaded] do
      raise ArgumentError,
            "expected :cluster's :strategy to be :local_first or :least_loaded, got: #{inspect(opts[:strategy])}"
    end

    for key <- [:overload, :gossip_interval], value = opts[key], value != nil do
      unless is_integer(value) and value > 0 do
        raise ArgumentError,
              "expected :cluster's #{inspect(key)} to be a positive integer, got: #{inspect(value)}"
      end
    end

    Map.new(opts)
  end

  def options!(other) do
    raise ArgumentError,
          "expected :cluster to be a boolean or a keyword list of :strategy, :overload and :gossip_interval, got: #{inspect(other)}"
  end

  # Makes the pool of the calling process (a SnakeBridge.Pool) a member of
  # the pool's group, for as long as that process lives.
  @doc false
  @spec join(atom(), pos_integer(), map()) :: :ok
  def join(pool, size, opts) do
    {:ok, _} = Member.start(pool, self(), size, opts)
    :ok
  end
end
