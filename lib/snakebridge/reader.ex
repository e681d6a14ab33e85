defmodule SnakeBridge.Reader do
  # One per Python worker, started by its pool process: reads the worker's
  # socket through a port on a dup of it and hands the bytes to the NIF,
  # which routes each frame (a reply to its caller's mailbox, stream items,
  # log lines, ...) from this process's scheduler. The schedulers poll port
  # descriptors themselves, so a reply costs one wake-up, not the two of a
  # reader thread followed by a scheduler.
  @moduledoc false

  alias SnakeBridge.NIF

  @doc false
  @spec start_link(reference(), non_neg_integer()) :: pid()
  def start_link(resource, fd) do
    # High priority: bytes waiting in this process's queue are callers
    # waiting, and routing them is a few microseconds of work.
    :erlang.spawn_opt(__MODULE__, :init, [resource, fd], [:link, priority: :high])
  end

  @doc false
  def init(resource, fd) do
    # The pool process's exit comes as a message too: it is handled below.
    Process.flag(:trap_exit, true)
    # :eof keeps the port open at the end of the socket, so that it is
    # closed here, before its descriptor is (see reader_close/1).
    port = Port.open({:fd, fd, fd}, [:binary, :in, :eof, :stream])
    loop(port, resource)
  end

  defp loop(port, resource) do
    receive do
      {^port, {:data, bytes}} ->
        route(resource, bytes)
        loop(port, resource)

      {^port, :eof} ->
        close(port, resource)

      # The worker exited (its pool process passes this on from the
      # runtime). The port may never see the socket's end: its read fails
      # when the worker left bytes unread, and the VM's fd driver then
      # stops reading silently. What the port read is in the mailbox;
      # reader_close/1 reads the rest.
      :worker_exited ->
        close(port, resource)

      {:EXIT, ^port, _reason} ->
        NIF.reader_close(resource)

      {:EXIT, _pool, reason} ->
        exit(reason)
    end
  end

  # A frame too large to decode on a normal scheduler is decoded on a dirty
  # one.
  defp route(resource, bytes) do
    with :dirty <- NIF.reader_route(resource, bytes), do: NIF.reader_route_dirty(resource, "")
  end

  defp close(port, resource) do
    Port.close(port)
    route_delivered(port, resource)
    NIF.reader_close(resource)
  end

  # Bytes the port delivered before it was closed.
  defp route_delivered(port, resource) do
    receive do
      {^port, {:data, bytes}} ->
        route(resource, bytes)
        route_delivered(port, resource)
    after
      0 -> :ok
    end
  end
end
