defmodule SnakeBridge.AffinityTest do
  use ExUnit.Case, async: true

  import SnakeBridge.TestHelpers

  alias SnakeBridge.{Error, Object, Session}

  @rounds 20

  defp start_pool(size) do
    name = :"affinity_#{size}_#{System.unique_integer([:positive])}"
    start_supervised!({SnakeBridge.Pool, pool_opts(name, size: size)}, id: name)
    wait_until(fn -> Enum.all?(SnakeBridge.stats(name).workers, &(&1.state == :ready)) end, 30_000)
    name
  end

  # Keeps the worker holding `object` busy from another process, so that a
  # call routed by load alone would go to another worker.
  defp keep_busy(object, seconds) do
    home = Object.os_pid(object)

    task =
      Task.async(fn ->
        SnakeBridge.call("sbaffinity", "busy", [seconds, object], pool: object.pool, timeout: 30_000)
      end)

    # Checked often: on a loaded machine a check every 20 ms could miss a
    # short busy spell altogether.
    wait_until(
      fn ->
        Enum.any?(SnakeBridge.stats(object.pool).workers, &(&1.os_pid == home and &1.in_flight > 0))
      end,
      5_000,
      2
    )

    task
  end

  defp worker_pid(pool, opts \\ []) do
    SnakeBridge.call!("sbaffinity", "pid", [], Keyword.put(opts, :pool, pool))
  end

  for size <- [2, 4] do
    describe "with #{size} workers" do
      setup do
        %{pool: start_pool(unquote(size))}
      end

      test "a date and a timedelta from two calls of one process combine in a third, #{@rounds} of #{@rounds}",
           %{pool: pool} do
        for round <- 1..@rounds do
          # A fresh process each round: it starts with no objects, as a new
          # caller does.
          result =
            Task.async(fn ->
              {:ok, date} =
                SnakeBridge.call("datetime", "date", [2024, 2, 28], pool: pool, as: :handle)

              busy = keep_busy(date, 0.2)

              {:ok, delta} =
                SnakeBridge.call("datetime", "timedelta", [],
                  kwargs: [days: round],
                  pool: pool,
                  as: :handle
                )

              result = SnakeBridge.call("operator", "add", [date, delta], pool: pool)
              home = Object.os_pid(date)
              assert {:ok, ^home} = Task.await(busy)
              result
            end)
            |> Task.await(10_000)

          expected = Date.add(~D[2024-02-28], round)
          assert result == {:ok, expected}
        end
      end

      test "a model made once serves 8 processes that combine it with their own objects, #{@rounds} of #{@rounds}",
           %{pool: pool} do
        {:ok, model} = SnakeBridge.call("sbaffinity", "Model", [2.0], pool: pool)

        for _round <- 1..@rounds do
          results =
            1..8
            |> Enum.map(fn i ->
              Task.async(fn ->
                # Each request process runs where the model lives.
                Session.run(model, fn ->
                  {:ok, features} =
                    SnakeBridge.call("sbaffinity", "Features", [[i, 1.0]], pool: pool)

                  SnakeBridge.method(model, "predict", [features])
                end)
              end)
            end)
            |> Task.await_many(10_000)

          assert results == Enum.map(1..8, &{:ok, 2.0 * (&1 + 1.0)})
        end
      end

      test "per-request objects made with worker: model combine with it, #{@rounds} of #{@rounds}",
           %{pool: pool} do
        {:ok, model} = SnakeBridge.call("sbaffinity", "Model", [3.0], pool: pool)

        for _round <- 1..@rounds do
          results =
            1..8
            |> Enum.map(fn i ->
              Task.async(fn ->
                {:ok, features} =
                  SnakeBridge.call("sbaffinity", "Features", [[i]], pool: pool, worker: model)

                SnakeBridge.method(model, "predict", [features])
              end)
            end)
            |> Task.await_many(10_000)

          assert results == Enum.map(1..8, &{:ok, 3.0 * &1})
        end
      end

      test "sessions take the workers in turn", %{pool: pool} do
        sessions = for _ <- 1..unquote(size), do: Session.new!(pool: pool)
        pids = Enum.map(sessions, &Session.os_pid/1)
        assert length(Enum.uniq(pids)) == unquote(size)
      end
    end
  end

  describe "a process's calls follow its objects" do
    setup do
      %{pool: start_pool(2)}
    end

    test "while one is alive; with none left it is load-balanced again", %{pool: pool} do
      {:ok, held} = SnakeBridge.call("builtins", "object", [], pool: pool)
      home = Object.os_pid(held)

      busy = keep_busy(held, 0.3)
      # Its worker is the busy one, yet the call goes there (and waits).
      assert worker_pid(pool) == home
      assert {:ok, ^home} = Task.await(busy)

      busy = keep_busy(held, 0.3)
      SnakeBridge.release(held)
      # Now the least busy worker takes it.
      assert worker_pid(pool) != home
      assert {:ok, ^home} = Task.await(busy)
    end

    test "the worker of the latest objects wins", %{pool: pool} do
      [one, two] = for _ <- 1..2, do: Session.new!(pool: pool)
      {:ok, _first} = SnakeBridge.call("builtins", "object", [], pool: pool, worker: one)
      assert worker_pid(pool) == Session.os_pid(one)
      {:ok, _second} = SnakeBridge.call("builtins", "object", [], pool: pool, worker: two)
      assert worker_pid(pool) == Session.os_pid(two)
    end

    test "to a worker that is gone, calls go elsewhere", %{pool: pool} do
      {:ok, held} = SnakeBridge.call("builtins", "object", [], pool: pool)
      home = Object.os_pid(held)
      System.cmd("kill", ["-9", Integer.to_string(home)])
      wait_until(fn -> Object.os_pid(held) == nil end)
      assert is_integer(worker_pid(pool))

      assert {:error, %Error{reason: :stale_handle}} =
               SnakeBridge.call("builtins", "id", [held], pool: pool)
    end

    test "objects of another pool do not steer calls", %{pool: pool} do
      other = start_pool(1)
      {:ok, _elsewhere} = SnakeBridge.call("builtins", "object", [], pool: other)
      assert is_integer(worker_pid(pool))
    end
  end

  describe "sessions" do
    setup do
      %{pool: start_pool(2)}
    end

    test "objects made inside run/2 live together, from any process", %{pool: pool} do
      session = Session.new!(pool: pool)
      home = Session.os_pid(session)

      objects =
        1..4
        |> Enum.map(fn _ ->
          Task.async(fn ->
            Session.run(session, fn -> SnakeBridge.call!("builtins", "object", [], pool: pool) end)
          end)
        end)
        |> Task.await_many()

      assert Enum.all?(objects, &(Object.os_pid(&1) == home))
      assert {:ok, 4} = SnakeBridge.call("builtins", "len", [objects], pool: pool)
    end

    test "run/2 returns the function's value and restores the outer pin, even on raise",
         %{pool: pool} do
      [outer, inner] = for _ <- 1..2, do: Session.new!(pool: pool)

      Session.run(outer, fn ->
        assert Session.run(inner, fn -> worker_pid(pool) end) == Session.os_pid(inner)
        assert_raise RuntimeError, fn -> Session.run(inner, fn -> raise "boom" end) end
        assert worker_pid(pool) == Session.os_pid(outer)
      end)

      assert Process.get(SnakeBridge.Native.pin_key()) == nil
    end

    test "pin/1 holds until unpin/0, and pipes", %{pool: pool} do
      [_, session] = for _ <- 1..2, do: Session.new!(pool: pool)
      assert session |> Session.pin() == :ok
      for _ <- 1..5, do: assert(worker_pid(pool) == Session.os_pid(session))
      assert Session.unpin() == :ok
      assert Process.get(SnakeBridge.Native.pin_key()) == nil
    end

    test "a pin applies to its own pool only", %{pool: pool} do
      other = start_pool(1)
      Session.pin(Session.new!(pool: pool))
      assert is_integer(worker_pid(other))
      Session.unpin()
    end

    test "eval and streams run in the session too", %{pool: pool} do
      session = Session.new!(pool: pool)
      home = Session.os_pid(session)
      assert SnakeBridge.eval!("import os; os.getpid()", %{}, pool: pool, worker: session) == home

      assert [^home] =
               SnakeBridge.stream("sbaffinity", "pid_stream", [], pool: pool, worker: session)
               |> Enum.to_list()
    end

    test "an object of another worker inside a session is a conflict that says what to do",
         %{pool: pool} do
      [one, two] = for _ <- 1..2, do: Session.new!(pool: pool)
      {:ok, a} = SnakeBridge.call("builtins", "object", [], pool: pool, worker: one)
      {:ok, b} = SnakeBridge.call("builtins", "object", [], pool: pool, worker: two)

      assert {:error, %Error{reason: :handle_conflict, message: message}} =
               SnakeBridge.call("builtins", "id", [[a, b]], pool: pool)

      assert message =~ "args[0][1]: this object lives in another Python worker"
      assert message =~ "SnakeBridge.Session.run(object_or_session, fun)"
      assert message =~ "worker: object_or_session"

      assert {:error, %Error{reason: :handle_conflict}} =
               Session.run(one, fn -> SnakeBridge.call("builtins", "id", [b], pool: pool) end)
    end

    test "objects of another pool as :worker are a conflict that names the pool", %{pool: pool} do
      other = start_pool(1)
      session = Session.new!(pool: other)

      assert {:error, %Error{reason: :handle_conflict, message: message}} =
               SnakeBridge.call("builtins", "object", [], pool: pool, worker: session)

      assert message =~ "the call goes to pool :#{pool}"
    end

    test "a session whose worker is gone fails with :stale_handle", %{pool: pool} do
      session = Session.new!(pool: pool)
      System.cmd("kill", ["-9", Integer.to_string(Session.os_pid(session))])
      wait_until(fn -> Session.os_pid(session) == nil end)

      assert {:error, %Error{reason: :stale_handle}} =
               SnakeBridge.call("sbaffinity", "pid", [], pool: pool, worker: session)
    end

    test "a released session's object fails with :stale_handle", %{pool: pool} do
      session = Session.new!(pool: pool)
      SnakeBridge.release(session.object)

      assert {:error, %Error{reason: :stale_handle, message: message}} =
               SnakeBridge.call("sbaffinity", "pid", [], pool: pool, worker: session)

      assert message =~ "released"
    end

    test "new/1 on a pool that does not run" do
      assert {:error, %Error{reason: :pool_not_found}} = Session.new(pool: :no_such_pool_here)
      assert_raise Error, fn -> Session.new!(pool: :no_such_pool_here) end
    end

    test "bad arguments raise ArgumentError naming them", %{pool: pool} do
      assert_raise ArgumentError, ~r/expected a SnakeBridge.Session or a SnakeBridge.Object/, fn ->
        Session.run(:nope, fn -> :ok end)
      end

      session = Session.new!(pool: pool)

      assert_raise ArgumentError, ~r/expected fun to be a function of arity 0/, fn ->
        Session.run(session, fn _ -> :ok end)
      end

      assert_raise ArgumentError, ~r/expected a SnakeBridge.Session or a SnakeBridge.Object/, fn ->
        Session.pin("x")
      end

      assert_raise ArgumentError,
                   ~r/expected :worker to be a SnakeBridge.Object or a SnakeBridge.Session/,
                   fn ->
                     SnakeBridge.call("math", "sqrt", [4.0], worker: self())
                   end

      assert_raise ArgumentError, ~r/expected the pool name to be an atom/, fn ->
        Session.new(pool: "default")
      end

      assert_raise ArgumentError, ~r/expected :timeout/, fn -> Session.new(timeout: -1) end
      assert_raise ArgumentError, ~r/unknown keys/, fn -> Session.new(size: 1) end
      assert_raise ArgumentError, ~r/expected a SnakeBridge.Session/, fn -> Session.os_pid(:x) end
    end
  end
end
