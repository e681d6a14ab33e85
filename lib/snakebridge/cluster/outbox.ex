defmodule SnakeBridge.Cluster.Outbox do
  # Messages a Client or a Relay has to send: a Client's requests per node,
  # a Relay's replies per client. Its owner sends everything that waits as
  # one message per destination once it has no message left to handle (its
  # GenServer timeout is then 0, see timeout/1), or at once when `@max`
  # have piled up. Each destination gets its messages in the order queued.
  @moduledoc false

  @max 256

  defstruct ops: %{}, count: 0

  @type t :: %__MODULE__{ops: %{term() => [term()]}, count: non_neg_integer()}

  @doc false
  @spec new() :: t()
  def new, do: %__MODULE__{}

  @doc false
  @spec put(t(), term(), term()) :: t()
  def put(%__MODULE__{ops: ops, count: count}, dest, op),
    do: %__MODULE__{ops: Map.update(ops, dest, [op], &[op | &1]), count: count + 1}

  # True when the owner should send now rather than when it is idle.
  @doc false
  @spec full?(t()) :: boolean()
  def full?(%__MODULE__{count: count}), do: count >= @max

  # The owner's GenServer timeout: 0 while anything waits.
  @doc false
  @spec timeout(t()) :: 0 | :infinity
  def timeout(%__MODULE__{count: 0}), do: :infinity
  def timeout(_outbox), do: 0

  # Everything queued, as {destination, ops in order}, and an empty outbox.
  # Taking from an empty one allocates nothing: a polling relay takes each
  # time its mailbox is empty.
  @doc false
  @spec take(t()) :: {[{term(), [term()]}], t()}
  def take(%__MODULE__{count: 0} = outbox), do: {[], outbox}

  def take(%__MODULE__{ops: ops}),
    do: {Enum.map(ops, fn {dest, queued} -> {dest, Enum.reverse(queued)} end), new()}

  # Takes out what waits for the destinations `gone?` picks: their ops, in
  # order, and the outbox without them.
  @doc false
  @spec drop(t(), (term() -> boolean())) :: {[term()], t()}
  def drop(%__MODULE__{ops: ops, count: count}, gone?) do
    {gone, kept} = Enum.split_with(ops, fn {dest, _queued} -> gone?.(dest) end)
    dropped = Enum.flat_map(gone, fn {_dest, queued} -> Enum.reverse(queued) end)
    {dropped, %__MODULE__{ops: Map.new(kept), count: count - length(dropped)}}
  end
end
