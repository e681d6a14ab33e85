defmodule SnakeBridgeBench.Harness do
  @moduledoc """
  Measurement loops and the report. Every call's result is checked against the
  expected value, so a broken system is reported as broken instead of fast.
  """

  @type system :: SnakeBridgeBench.Systems.system()
  @type scenario :: %{
          required(:id) => atom(),
          required(:kind) => :latency | :throughput | :items,
          required(:label) => String.t(),
          optional(:mfa) => {String.t(), String.t(), list()},
          optional(:expected) => term(),
          optional(:calls) => pos_integer(),
          optional(:percentiles) => [:p50 | :p99],
          optional(:cpu) => boolean()
        }

  # A :latency scenario makes `calls` sequential calls per chunk (default
  # config.latency_calls) and reports the `percentiles` (default p50 and p99).
  # With `cpu: true` each chunk also records the CPU time per call of the BEAM
  # and of the system's Python processes.

  # An :items scenario has no :mfa but `count` items to consume from one
  # process: `stream: {m, f, a}` for systems that stream (SnakeBridge), and
  # `per_item: fn i -> {m, f, a} end` for one call per item (the baseline);
  # item i must equal `item.(i)`.

  # ---- settings -------------------------------------------------------------

  @doc "The integer in the environment variable `name`, or `default` when unset."
  @spec env_int(String.t(), integer()) :: integer()
  def env_int(name, default) do
    case System.get_env(name) do
      nil -> default
      value -> String.to_integer(String.trim(value))
    end
  end

  @doc "The number in the environment variable `name`, or `default` when unset."
  @spec env_float(String.t(), float()) :: float()
  def env_float(name, default) do
    case System.get_env(name) do
      nil -> default
      value -> value |> String.trim() |> Float.parse() |> elem(0)
    end
  end

  # ---- one call, smoke check ------------------------------------------------

  @doc "Runs one call of `scenario` and checks the result."
  @spec check(system(), scenario()) :: :ok | {:error, term()}
  def check(system, %{kind: :items} = scenario) do
    case items_chunk(system, scenario) do
      {:ok, _} -> :ok
      {:error, _count, example} -> {:error, example}
    end
  end

  def check(%{call: call}, %{mfa: {m, f, a}, expected: expected}) do
    case call.(m, f, a, 30_000) do
      {:ok, ^expected} -> :ok
      other -> {:error, other}
    end
  end

  # ---- latency: one caller, sequential calls ---------------------------------

  @doc """
  Makes `n` sequential calls from this process and returns the p50 and p99
  round-trip latency in microseconds, and `n` as `calls`.
  """
  @spec latency_chunk(system(), scenario(), pos_integer()) ::
          {:ok, %{p50: float(), p99: float(), calls: pos_integer()}}
          | {:error, non_neg_integer(), term()}
  def latency_chunk(%{call: call}, %{mfa: {m, f, a}, expected: expected}, n) do
    {samples, errors, example} = latency_loop(call, m, f, a, {:ok, expected}, n, [], 0, nil)

    if errors == 0 do
      sorted = samples |> Enum.sort() |> List.to_tuple()
      {:ok, %{p50: percentile_us(sorted, 0.50), p99: percentile_us(sorted, 0.99), calls: n}}
    else
      {:error, errors, example}
    end
  end

  defp latency_loop(_call, _m, _f, _a, _expected, 0, samples, errors, example),
    do: {samples, errors, example}

  defp latency_loop(call, m, f, a, expected, n, samples, errors, example) do
    t0 = :erlang.monotonic_time()
    result = call.(m, f, a, 5_000)
    dt = :erlang.monotonic_time() - t0

    case result do
      ^expected -> latency_loop(call, m, f, a, expected, n - 1, [dt | samples], errors, example)
      bad -> latency_loop(call, m, f, a, expected, n - 1, samples, errors + 1, example || bad)
    end
  end

  defp percentile_us(sorted, p) do
    n = tuple_size(sorted)
    index = min(max(ceil(p * n) - 1, 0), n - 1)
    :erlang.convert_time_unit(elem(sorted, index), :native, :nanosecond) / 1_000
  end

  # ---- throughput: many concurrent callers ------------------------------------

  @doc """
  Runs `callers` processes that call in a loop for `seconds`, and returns the
  completed calls per second as `rate` and their number as `calls` (calls
  still in flight at the deadline finish and count; the elapsed time runs
  until the last caller is done).
  """
  @spec throughput_chunk(system(), scenario(), pos_integer(), number()) ::
          {:ok, %{rate: float(), calls: non_neg_integer()}} | {:error, non_neg_integer(), term()}
  def throughput_chunk(%{call: call}, %{mfa: {m, f, a}, expected: expected}, callers, seconds) do
    parent = self()
    tag = make_ref()
    expected = {:ok, expected}

    pids =
      for _ <- 1..callers do
        spawn_link(fn ->
          receive do
            {^tag, :go, deadline} ->
              send(
                parent,
                {tag, self(), caller_loop(call, m, f, a, expected, deadline, 0, 0, nil)}
              )
          end
        end)
      end

    t0 = :erlang.monotonic_time()
    deadline = t0 + :erlang.convert_time_unit(round(seconds * 1_000_000), :microsecond, :native)
    Enum.each(pids, &send(&1, {tag, :go, deadline}))
    results = for pid <- pids, do: receive(do: ({^tag, ^pid, result} -> result))

    elapsed_s =
      :erlang.convert_time_unit(:erlang.monotonic_time() - t0, :native, :microsecond) / 1_000_000

    {ok, errors, example} =
      Enum.reduce(results, {0, 0, nil}, fn {ok, err, ex}, {ok_acc, err_acc, ex_acc} ->
        {ok_acc + ok, err_acc + err, ex_acc || ex}
      end)

    if errors == 0, do: {:ok, %{rate: ok / elapsed_s, calls: ok}}, else: {:error, errors, example}
  end

  defp caller_loop(call, m, f, a, expected, deadline, ok, errors, example) do
    if :erlang.monotonic_time() < deadline do
      case call.(m, f, a, 30_000) do
        ^expected -> caller_loop(call, m, f, a, expected, deadline, ok + 1, errors, example)
        bad -> caller_loop(call, m, f, a, expected, deadline, ok, errors + 1, example || bad)
      end
    else
      {ok, errors, example}
    end
  end

  # ---- items: one consumer of a sequence of results ---------------------------

  @doc """
  Consumes `count` items in this process, through the system's stream when it
  has one and one call per item otherwise, and returns items per second.
  """
  @spec items_chunk(system(), scenario()) ::
          {:ok, %{rate: float()}} | {:error, non_neg_integer(), term()}
  def items_chunk(system, %{count: count, item: item} = scenario) do
    t0 = :erlang.monotonic_time()

    {ok, errors, example} =
      case system do
        %{stream: stream} when is_function(stream) ->
          {m, f, a} = scenario.stream

          try do
            m
            |> stream.(f, a)
            |> Enum.reduce({0, 0, nil}, fn value, acc ->
              tally(acc, value == item.(elem(acc, 0) + elem(acc, 1)), value)
            end)
          rescue
            e -> {0, 1, e}
          end

        %{call: call} ->
          Enum.reduce(0..(count - 1), {0, 0, nil}, fn i, acc ->
            {m, f, a} = scenario.per_item.(i)
            result = call.(m, f, a, 30_000)
            tally(acc, result == {:ok, item.(i)}, result)
          end)
      end

    elapsed_s =
      :erlang.convert_time_unit(:erlang.monotonic_time() - t0, :native, :microsecond) / 1_000_000

    cond do
      errors > 0 -> {:error, errors, example}
      ok != count -> {:error, 1, {:items, ok, :expected, count}}
      true -> {:ok, %{rate: ok / elapsed_s}}
    end
  end

  defp tally({ok, errors, example}, true, _value), do: {ok + 1, errors, example}
  defp tally({ok, errors, example}, false, value), do: {ok, errors + 1, example || value}

  # ---- the whole run ----------------------------------------------------------

  @doc """
  Warms up, then runs `rounds` rounds; in each round every scenario runs one
  chunk per system, systems alternating which goes first. Returns
  `%{{scenario_id, system_name, metric} => [value]}` plus errors.
  """
  @spec run([system()], [scenario()], map()) :: %{results: map(), errors: map()}
  def run(systems, scenarios, config) do
    for system <- systems, do: warm_up(system, scenarios, config)

    Enum.reduce(1..config.rounds, %{results: %{}, errors: %{}}, fn round, acc ->
      order = if rem(round, 2) == 1, do: systems, else: Enum.reverse(systems)

      acc =
        for scenario <- scenarios, system <- order, reduce: acc do
          acc -> record(acc, scenario, system, measure(system, scenario, config))
        end

      if config.verbose, do: IO.puts(:stderr, "round #{round}/#{config.rounds} done")
      acc
    end)
  end

  defp warm_up(system, scenarios, config) do
    IO.puts(:stderr, "warming up #{system.name} ...")

    for scenario <- scenarios do
      case scenario.kind do
        :latency ->
          latency_chunk(system, scenario, latency_calls(scenario, config))

        :throughput ->
          throughput_chunk(system, scenario, config.callers, min(config.seconds, 0.5))

        :items ->
          items_chunk(system, scenario)
      end
    end
  end

  defp latency_calls(scenario, config), do: Map.get(scenario, :calls, config.latency_calls)

  # The CPU deltas bracket only this system's chunk: the BEAM's total includes
  # the other system's threads, which are idle meanwhile, and the Python
  # processes are this system's own.
  defp measure(system, scenario, config) do
    if config.cpu and Map.get(scenario, :cpu, false) do
      pids = system.os_pids.()
      beam0 = SnakeBridgeBench.Cpu.run_time_ns([:self])
      python0 = SnakeBridgeBench.Cpu.run_time_ns(pids)
      result = chunk(system, scenario, config)
      beam1 = SnakeBridgeBench.Cpu.run_time_ns([:self])
      python1 = SnakeBridgeBench.Cpu.run_time_ns(pids)

      case result do
        {:ok, %{calls: calls} = metrics}
        when calls > 0 and is_integer(python0) and is_integer(python1) ->
          beam = (beam1 - beam0) / calls / 1_000
          python = (python1 - python0) / calls / 1_000
          {:ok, Map.merge(metrics, %{cpu_beam: beam, cpu_python: python, cpu_total: beam + python})}

        other ->
          other
      end
    else
      chunk(system, scenario, config)
    end
  end

  defp chunk(system, %{kind: :latency} = scenario, config),
    do: latency_chunk(system, scenario, latency_calls(scenario, config))

  defp chunk(system, %{kind: :items} = scenario, _config), do: items_chunk(system, scenario)

  defp chunk(system, %{kind: :throughput} = scenario, config),
    do: throughput_chunk(system, scenario, config.callers, config.seconds)

  defp record(acc, scenario, system, {:ok, metrics}) do
    metrics
    |> Map.delete(:calls)
    |> Enum.reduce(acc, fn {metric, value}, acc ->
      key = {scenario.id, system.name, metric}
      update_in(acc, [:results, Access.key(key, [])], &[value | &1])
    end)
  end

  defp record(acc, scenario, system, {:error, count, example}) do
    update_in(acc, [:errors, Access.key({scenario.id, system.name}, {0, example})], fn {n, ex} ->
      {n + count, ex}
    end)
  end

  # ---- report -------------------------------------------------------------------

  @doc "Median of a non-empty list of numbers."
  @spec median([number()]) :: float()
  def median(values) do
    sorted = Enum.sort(values)
    n = length(sorted)
    mid = div(n, 2)

    if rem(n, 2) == 1,
      do: Enum.at(sorted, mid) / 1,
      else: (Enum.at(sorted, mid - 1) + Enum.at(sorted, mid)) / 2
  end

  @doc """
  Prints the results table: medians over rounds with [min-max] (rows marked
  "min over rounds" show the minimum alone), and with two systems the ratio
  second/first of those values. Rows no system measured are left out.
  """
  @spec report(%{results: map(), errors: map()}, [system()], [scenario()]) :: :ok
  def report(%{results: results, errors: errors}, systems, scenarios) do
    names = Enum.map(systems, & &1.name)

    rows =
      for scenario <- scenarios,
          {metric, label, unit, better, stat} <- metrics(scenario),
          cells =
            for(name <- names, do: cell(results, errors, {scenario.id, name}, metric, stat, unit)),
          not Enum.all?(cells, &match?({:none, _}, &1)) do
        [label <> " (#{unit})" | Enum.map(cells, &elem(&1, tuple_size(&1) - 1))] ++
          [ratio_cell(cells, better)]
      end

    # With two systems the last column is second / first (snakebridge / baseline).
    header =
      ["metric" | names] ++
        if(match?([_, _], names), do: [Enum.join(Enum.reverse(names), "/")], else: [])

    print_table([header | Enum.map(rows, &Enum.take(&1, length(header)))])

    for {{id, name}, {count, example}} <- errors do
      IO.puts(
        "\n#{name} gave #{count} wrong results in #{id}; first one: #{inspect(example, limit: 20, printable_limit: 200)}"
      )
    end

    :ok
  end

  defp cell(results, errors, {id, name}, metric, stat, unit) do
    case {Map.get(results, {id, name, metric}), Map.get(errors, {id, name})} do
      {_, {count, _example}} ->
        {:broken, "BROKEN: #{count} bad results"}

      {nil, nil} ->
        {:none, "-"}

      {values, nil} when stat == :min ->
        min = Enum.min(values)
        {:ok, min, num(min, unit)}

      {values, nil} ->
        {median, min, max} = {median(values), Enum.min(values), Enum.max(values)}
        {:ok, median, "#{num(median, unit)} [#{num(min, unit)}-#{num(max, unit)}]"}
    end
  end

  # {metric, row label, unit, which way is better, :median (with [min-max]) or :min}
  defp metrics(%{kind: :latency, label: label} = scenario) do
    percentiles =
      for p <- Map.get(scenario, :percentiles, [:p50, :p99]),
          row <- [{p, "#{label}, #{p}", "µs", :lower, :median}] ++ min_row(p, label),
          do: row

    percentiles ++ cpu_metrics(scenario)
  end

  defp metrics(%{kind: :throughput, label: label} = scenario),
    do: [{:rate, label, "calls/s", :higher, :median} | cpu_metrics(scenario)]

  defp metrics(%{kind: :items, label: label}), do: [{:rate, label, "items/s", :higher, :median}]

  # The best round is the one least disturbed by the machine, so for the
  # typical latency it gets its own row and ratio.
  defp min_row(:p50, label), do: [{:p50, "#{label}, p50 min over rounds", "µs", :lower, :min}]
  defp min_row(_, _label), do: []

  defp cpu_metrics(%{cpu: true, label: label}) do
    [
      {:cpu_beam, "#{label}, CPU per call: BEAM", "µs", :lower, :median},
      {:cpu_python, "#{label}, CPU per call: Python", "µs", :lower, :median},
      {:cpu_total, "#{label}, CPU per call: total", "µs", :lower, :median}
    ]
  end

  defp cpu_metrics(_scenario), do: []

  defp ratio_cell([{:ok, first, _}, {:ok, second, _}], better) when first > 0 do
    "#{:erlang.float_to_binary(second / first, decimals: 2)}x (#{better} is better)"
  end

  defp ratio_cell(_, _), do: "n/a"

  defp num(value, "µs"), do: :erlang.float_to_binary(value / 1, decimals: 1)
  defp num(value, _), do: value |> round() |> Integer.to_string() |> group_thousands()

  defp group_thousands(digits) do
    digits |> String.reverse() |> String.replace(~r/(\d{3})(?=\d)/, "\\1,") |> String.reverse()
  end

  defp print_table(rows) do
    widths =
      rows
      |> Enum.zip_with(& &1)
      |> Enum.map(fn column -> column |> Enum.map(&String.length/1) |> Enum.max() end)

    [header | body] = rows

    line = fn row ->
      row
      |> Enum.zip(widths)
      |> Enum.map_join("  ", fn {cell, w} -> String.pad_trailing(cell, w) end)
      |> String.trim_trailing()
    end

    IO.puts(line.(header))
    IO.puts(widths |> Enum.map(&String.duplicate("-", &1)) |> Enum.join("  "))
    Enum.each(body, &IO.puts(line.(&1)))
  end
end
