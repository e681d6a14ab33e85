defmodule SnakeBridge.DataTest do
  # The data kinds (README "Type mapping"), with real numpy, pandas and
  # pyarrow: the pools run the repository's .venv Python, which `make
  # setup` fills from python_worker/requirements-test.txt.
  use ExUnit.Case, async: true

  import SnakeBridge.TestHelpers

  alias SnakeBridge.{Arrow, Construct, Error, PythonError, Tensor, Timedelta}

  @pool :data_test
  @venv_python Path.expand("../../.venv/bin/python", __DIR__)
  @hidden Path.expand("../support/hidden", __DIR__)
  @python_dir Path.expand("../support/python", __DIR__)

  setup_all do
    unless File.exists?(@venv_python) do
      raise "#{@venv_python} is missing: run `make setup` (it installs numpy, pandas and pyarrow)"
    end

    start_supervised!(
      {SnakeBridge.Pool, pool_opts(@pool, python: @venv_python, python_path: [@python_dir])}
    )

    # Only the test that checks numpy is not imported uses this one.
    start_supervised!(
      {SnakeBridge.Pool,
       pool_opts(:data_fresh, size: 1, python: @venv_python, python_path: [@python_dir])},
      id: :fresh
    )

    start_supervised!(
      {SnakeBridge.Pool,
       pool_opts(:data_no_pyarrow,
         size: 1,
         python: @venv_python,
         python_path: [Path.join(@hidden, "no_pyarrow"), @python_dir]
       )},
      id: :no_pyarrow
    )

    start_supervised!(
      {SnakeBridge.Pool,
       pool_opts(:data_no_numpy,
         size: 1,
         python: @venv_python,
         python_path: [Path.join(@hidden, "no_numpy"), @python_dir]
       )},
      id: :no_numpy
    )

    :ok
  end

  defp eval(code, globals \\ %{}, opts \\ []),
    do: SnakeBridge.eval(code, globals, Keyword.merge([pool: @pool, timeout: 20_000], opts))

  defp eval!(code, globals \\ %{}, opts \\ []) do
    {:ok, value} = eval(code, globals, opts)
    value
  end

  defp describe_value(value, pool \\ @pool),
    do: SnakeBridge.call!("sbdata", "describe", [value], pool: pool, timeout: 20_000)

  defp identity(value),
    do: SnakeBridge.call("sbhelpers", "identity", [value], pool: @pool, timeout: 20_000)

  describe "numpy scalars" do
    test "become integers, floats and booleans, nested too" do
      assert eval!("""
             import numpy as np
             [np.int64(-3), np.uint64(2**64 - 1), np.int8(7), np.bool_(True), np.float32(0.5),
              np.float64(1.25), {"k": (np.int16(2), np.bool_(False))}]
             """) == [-3, 18_446_744_073_709_551_615, 7, true, 0.5, 1.25, %{"k" => {2, false}}]
    end

    test "a list of numpy ints is a list of integers" do
      assert eval!("import numpy as np\nlist(np.arange(10000))") == Enum.to_list(0..9999)
    end

    test "datetime64 and timedelta64 follow datetime and timedelta; NaT is nil" do
      assert eval!("""
             import numpy as np
             [np.datetime64("2024-03-01T10:00:00.123456789"), np.datetime64("NaT"),
              np.timedelta64(1500, "ms")]
             """) == [~N[2024-03-01 10:00:00.123456], nil, %Timedelta{microseconds: 1_500_000}]
    end

    test "the worker does not import numpy for values of other types" do
      assert eval!(
               """
               import sys, datetime, decimal
               from snakebridge_worker._native import dumps
               dumps([datetime.date(2024, 1, 1), decimal.Decimal(1), 1.5])
               "numpy" in sys.modules
               """,
               %{},
               pool: :data_fresh
             ) == false
    end
  end

  describe "tensors from Python" do
    test "an ndarray comes back as a tensor by default" do
      tensor = eval!("import numpy as np\nnp.arange(12, dtype=np.float64).reshape(3, 4)")
      assert %Tensor{type: {:f, 64}, shape: {3, 4}, data: data} = tensor
      assert data == for(i <- 0..11, into: <<>>, do: <<i * 1.0::float-64-little>>)
    end

    test "as: :handle keeps the ndarray in Python" do
      assert {:ok, %SnakeBridge.Object{type: "numpy.ndarray"}} =
               eval("import numpy as np\nnp.zeros(3)", %{}, as: :handle)
    end

    test "strided, transposed and big-endian arrays come back C-contiguous and little-endian" do
      assert %Tensor{type: {:s, 64}, shape: {3}, data: <<0::64-little, 2::64-little, 4::64-little>>} =
               eval!("import numpy as np\nnp.arange(6)[::2]")

      assert %Tensor{type: {:s, 32}, shape: {2, 2}, data: data} =
               eval!("import numpy as np\nnp.array([[1, 2], [3, 4]], dtype='>i4').T")

      assert data == <<1::32-little, 3::32-little, 2::32-little, 4::32-little>>
    end

    test "0-d, empty and boolean arrays" do
      assert eval!("import numpy as np\nnp.array(2.5)") ==
               %Tensor{type: {:f, 64}, shape: {}, data: <<2.5::float-64-little>>}

      assert eval!("import numpy as np\nnp.zeros((0, 3), dtype=np.int16)") ==
               %Tensor{type: {:s, 16}, shape: {0, 3}, data: ""}

      assert eval!("import numpy as np\nnp.array([True, False])") ==
               %Tensor{type: {:u, 8}, shape: {2}, data: <<1, 0>>}
    end

    test "array.array, typed memoryviews and __array_interface__ objects are tensors; byte views stay binaries" do
      assert eval!("import array\narray.array('h', [1, -2])", %{}, pool: :data_no_numpy) ==
               %Tensor{type: {:s, 16}, shape: {2}, data: <<1::16-little, -2::16-little>>}

      assert eval!("memoryview(bytes(8)).cast('d', [1, 1])", %{}, pool: :data_no_numpy) ==
               %Tensor{type: {:f, 64}, shape: {1, 1}, data: <<0::64>>}

      assert eval!("memoryview(b'abc')") == "abc"

      assert %Tensor{type: {:f, 32}, shape: {2}} =
               eval!("""
               import numpy as np
               class Wrapped:
                   def __init__(self):
                       self.__array_interface__ = np.ones(2, np.float32).__array_interface__
               Wrapped()
               """)
    end

    test "object and string arrays stay objects" do
      assert %SnakeBridge.Object{type: "numpy.ndarray"} =
               eval!("import numpy as np\nnp.array(['a', 'b'])")
    end

    test "to_nx/1 makes an Nx tensor of the same type and shape" do
      tensor = eval!("import numpy as np\nnp.arange(6, dtype=np.int32).reshape(2, 3)")
      nx = Tensor.to_nx(tensor)
      assert Nx.type(nx) == {:s, 32}
      assert Nx.shape(nx) == {2, 3}
      assert Nx.to_binary(nx) == tensor.data
    end
  end

  describe "tensors to Python and back" do
    @types [
      {:u, 8},
      {:u, 16},
      {:u, 32},
      {:u, 64},
      {:s, 8},
      {:s, 16},
      {:s, 32},
      {:s, 64},
      {:f, 16},
      {:f, 32},
      {:f, 64},
      {:c, 64},
      {:c, 128}
    ]

    test "every Nx type round-trips, including 0-d and empty tensors" do
      for type <- @types, shape <- [{2, 3}, {}, {0}, {4, 0, 2}] do
        {_, bits} = type
        count = shape |> Tuple.to_list() |> Enum.product()
        data = for i <- 1..(count * div(bits, 8))//1, into: <<>>, do: <<rem(i * 37, 61)>>
        tensor = Tensor.new(data, type, shape)
        assert identity(tensor) == {:ok, tensor}, "#{inspect(type)} #{inspect(shape)}"
      end
    end

    test "a tensor arrives as a writable numpy array of its dtype and shape" do
      tensor = Tensor.new(<<1::64-little, 2::64-little>>, {:u, 64}, {2, 1})
      assert describe_value(tensor) == {"numpy.ndarray", "<u8", [2, 1], true}

      assert eval!("(x * 2).tolist()", %{x: Tensor.new(<<1.5::float-32-little>>, {:f, 32}, {1})}) ==
               [3.0]
    end

    test "without numpy a tensor arrives as a memoryview of that format and shape" do
      tensor =
        Tensor.new(<<1::32-little, 2::32-little, 3::32-little, 4::32-little>>, {:s, 32}, {2, 2})

      assert describe_value(tensor, :data_no_numpy) == {"builtins.memoryview", "i", [2, 2], true}

      complex = Tensor.new(<<1.0::float-64-little, 2.0::float-64-little>>, {:c, 128}, {1})
      assert describe_value(complex, :data_no_numpy) == {"builtins.memoryview", "d", [1, 2], true}

      assert SnakeBridge.call!("sbhelpers", "identity", [tensor], pool: :data_no_numpy) == tensor
    end

    test "bf16 arrives widened exactly to float32 (numpy has no bfloat16 without ml_dtypes)" do
      # 1.0 and -2.5 in bfloat16: the top halves of their float32 forms.
      tensor = Tensor.new(<<0x3F80::16-little, 0xC020::16-little>>, {:bf, 16}, {2})
      assert eval!("x.tolist()", %{x: tensor}) == [1.0, -2.5]

      assert {:ok, %Tensor{type: {:f, 32}, data: <<1.0::float-32-little, -2.5::float-32-little>>}} =
               identity(tensor)
    end

    test "an Nx tensor in the arguments is sent as a tensor" do
      nx =
        <<1.0::float-64-little, 2.0::float-64-little>>
        |> Nx.from_binary({:f, 64})
        |> Nx.reshape({2, 1})

      assert eval!("x.sum().item()", %{x: nx}) == 3.0
      assert identity([nx]) == {:ok, [Tensor.new(Nx.to_binary(nx), {:f, 64}, {2, 1})]}
    end

    test "a malformed tensor is refused before anything is sent" do
      bad = %Tensor{data: <<0, 0, 0>>, type: {:f, 32}, shape: {1}}
      assert {:error, %Error{reason: :unsupported_type, message: message}} = identity([bad])

      assert message =~
               "args[0][0]: a SnakeBridge.Tensor of type f32 and shape [1] with 3 bytes of data instead of 4"

      bad_type = %Tensor{data: <<0>>, type: {:f, 8}, shape: {1}}
      assert {:error, %Error{reason: :unsupported_type, message: message}} = identity(bad_type)
      assert message =~ "a SnakeBridge.Tensor of type {:f, 8}, which is not one of"

      assert_raise ArgumentError, ~r/expected data to hold 8 bytes/, fn ->
        Tensor.new(<<0>>, {:f, 64}, {1})
      end
    end

    test "a large tensor keeps every byte" do
      data = :crypto.strong_rand_bytes(8 * 1024 * 1024)
      tensor = Tensor.new(data, {:f, 64}, {1024, 1024})
      assert identity(tensor) == {:ok, tensor}
      assert %Tensor{shape: {1024, 1024}, data: back} = eval!("x.copy()", %{x: tensor})
      assert back == data
    end
  end

  describe "dates and times" do
    test "Date, Time, NaiveDateTime round-trip with exact microseconds" do
      values = [
        ~D[2024-02-29],
        ~T[23:59:59.999999],
        ~T[00:00:00],
        ~N[2024-01-02 03:04:05.000001],
        ~N[1999-12-31 00:00:00]
      ]

      assert identity(values) == {:ok, values}

      assert eval!("[type(v).__name__ for v in x]", %{x: values}) ==
               ["date", "time", "time", "datetime", "datetime"]
    end

    test "a UTC DateTime becomes an aware datetime in UTC and comes back equal" do
      dt = ~U[2024-05-06 07:08:09.123456Z]
      assert identity(dt) == {:ok, dt}
      assert eval!("import datetime\nx.tzinfo is datetime.timezone.utc", %{x: dt})
    end

    test "a zoned datetime keeps its offset and its zone name" do
      assert %DateTime{
               time_zone: "Europe/Paris",
               zone_abbr: "CEST",
               utc_offset: 3600,
               std_offset: 3600,
               hour: 12,
               microsecond: {5, 6}
             } =
               dt =
               eval!("""
               import datetime, zoneinfo
               datetime.datetime(2024, 7, 1, 12, 0, 0, 5, tzinfo=zoneinfo.ZoneInfo("Europe/Paris"))
               """)

      assert eval!("(x.tzinfo.key, x.utcoffset().total_seconds())", %{x: dt}) ==
               {"Europe/Paris", 7200.0}
    end

    test "a fixed offset keeps the offset" do
      assert %DateTime{time_zone: "UTC-03:00", utc_offset: -10_800, std_offset: 0, hour: 9} =
               dt =
               eval!("""
               import datetime
               datetime.datetime(2024, 1, 1, 9, tzinfo=datetime.timezone(datetime.timedelta(hours=-3)))
               """)

      assert eval!("x.isoformat()", %{x: dt}) == "2024-01-01T09:00:00-03:00"
    end

    test "timedelta comes back as SnakeBridge.Timedelta and goes back as timedelta" do
      assert eval!("import datetime\ndatetime.timedelta(days=-1, microseconds=5)") ==
               %Timedelta{microseconds: -86_400_000_000 + 5}

      assert eval!("x.total_seconds()", %{x: %Timedelta{microseconds: 1_500_000}}) == 1.5
    end

    test "an aware time stays an object; a non-ISO calendar is refused" do
      assert %SnakeBridge.Object{type: "datetime.time"} =
               eval!("import datetime\ndatetime.time(1, tzinfo=datetime.timezone.utc)")

      date = %{~D[2024-01-01] | calendar: Some.Calendar}
      assert {:error, %Error{reason: :unsupported_type, message: message}} = identity(date)
      assert message =~ "a Date in a calendar other than Calendar.ISO"
    end
  end

  describe "pandas" do
    test "Timestamps follow datetime, NaT and NA become nil" do
      assert eval!("""
             import pandas as pd
             [pd.Timestamp("2024-01-01 12:00:00.123456789"), pd.NaT, pd.NA,
              pd.Timestamp("2024-01-01", tz="UTC"), pd.Timedelta("2s")]
             """) == [
               ~N[2024-01-01 12:00:00.123456],
               nil,
               nil,
               ~U[2024-01-01 00:00:00Z],
               %Timedelta{microseconds: 2_000_000}
             ]
    end

    test "records with Timestamps and numpy values are plain data" do
      assert eval!("""
             import pandas as pd
             pd.DataFrame({"t": pd.to_datetime(["2024-01-01", None]), "n": [1, 2]}).to_dict("records")
             """) == [%{"t" => ~N[2024-01-01 00:00:00], "n" => 1}, %{"t" => nil, "n" => 2}]
    end
  end

  describe "Decimal, UUID, Path" do
    test "Decimal structs and decimal.Decimal both ways" do
      decimals = [
        %{__struct__: Decimal, sign: -1, coef: 123, exp: -2},
        %{__struct__: Decimal, sign: 1, coef: 10 ** 40, exp: 5},
        %{__struct__: Decimal, sign: 1, coef: :NaN, exp: 0},
        %{__struct__: Decimal, sign: -1, coef: :inf, exp: 0}
      ]

      assert eval!("[str(d) for d in x]", %{x: decimals}) ==
               ["-1.23", "1.0000000000000000000000000000000000000000E+45", "NaN", "-Infinity"]

      assert identity(decimals) == {:ok, decimals}

      assert eval!("import decimal\ndecimal.Decimal('0.10')") ==
               %{__struct__: Decimal, sign: 1, coef: 10, exp: -2}
    end

    test "a malformed Decimal is refused" do
      assert {:error, %Error{message: message}} =
               identity(%{__struct__: Decimal, sign: 0, coef: 1, exp: 0})

      assert message =~ "a Decimal whose sign is not 1 or -1"
    end

    test "UUID and paths come back as strings" do
      assert eval!("""
             import uuid, pathlib
             [uuid.UUID("12345678-1234-5678-1234-567812345678"), pathlib.PurePosixPath("/tmp/x")]
             """) == ["12345678-1234-5678-1234-567812345678", "/tmp/x"]
    end

    test "Fraction and complex stay objects unless an encoder is registered" do
      assert %SnakeBridge.Object{type: "complex"} = eval!("1 + 2j")

      assert %{"numerator" => 1, "denominator" => 3} =
               eval!("import sbdata, fractions\nfractions.Fraction(1, 3)")
    end
  end

  describe "Arrow" do
    test "as: :arrow returns a DataFrame or Table as IPC stream bytes, which go back as a Table" do
      assert {:ok, %Arrow{data: <<0xFF, 0xFF, 0xFF, 0xFF, _::binary>>} = arrow} =
               eval("import pandas as pd\npd.DataFrame({'a': [1, 2], 'b': ['x', None]})", %{},
                 as: :arrow
               )

      assert eval!("(type(x).__module__ + '.' + type(x).__name__, x.to_pydict())", %{x: arrow}) ==
               {"pyarrow.lib.Table", %{"a" => [1, 2], "b" => ["x", nil]}}

      assert eval!("(type(x).__name__, x['a'].tolist())", %{x: Arrow.new(arrow.data, to: :pandas)}) ==
               {"DataFrame", [1, 2]}

      assert {:ok, %Arrow{}} = eval("import pyarrow as pa\npa.table({'a': [1.5]})", %{}, as: :arrow)
    end

    test "as: :arrow with a value that is not a table is a Python TypeError" do
      assert {:error, %PythonError{type: "TypeError", message: message}} =
               eval("[1, 2]", %{}, as: :arrow)

      assert message =~ "as: :arrow needs a pandas DataFrame or a pyarrow Table, got builtins.list"
    end

    test "without pyarrow in the worker's Python, as: :arrow says so" do
      assert {:error, %PythonError{type: "ImportError", message: message}} =
               SnakeBridge.eval("import pandas as pd\npd.DataFrame({'a': [1]})", %{},
                 pool: :data_no_pyarrow,
                 as: :arrow,
                 timeout: 20_000
               )

      assert message =~ "pyarrow is needed to return a result as: :arrow"
      assert message =~ "pip install pyarrow"

      # A value that cannot be built from the arguments fails the call.
      assert {:error, %Error{reason: :unsupported_type, message: message}} =
               SnakeBridge.call("sbhelpers", "identity", [Arrow.new("x")], pool: :data_no_pyarrow)

      assert message =~ "pyarrow is needed to receive an Arrow table"
    end

    test "Arrow.new/2 checks its arguments" do
      assert_raise ArgumentError, ~r/expected data to be a binary/, fn -> Arrow.new(1) end

      assert_raise ArgumentError, ~r/:to to be :table or :pandas/, fn ->
        Arrow.new("x", to: :polars)
      end
    end
  end

  describe "extension points" do
    test "a struct with a SnakeBridge.Encoder implementation becomes what it says" do
      money = %SnakeBridge.Test.Money{amount: 5, currency: "USD"}
      assert SnakeBridge.call!("builtins", "repr", [[money]], pool: @pool) == "[Money(5, 'USD')]"

      nested = %SnakeBridge.Test.Tagged{inner: money}

      assert SnakeBridge.call!("builtins", "repr", [nested], pool: @pool) ==
               "{'tag': 'tagged', 'inner': Money(5, 'USD')}" or
               SnakeBridge.call!("builtins", "repr", [nested], pool: @pool) ==
                 "{'inner': Money(5, 'USD'), 'tag': 'tagged'}"

      assert eval!("x.currency", %{x: money}) == "USD"
    end

    test "a struct without an implementation is still refused, naming where it is" do
      assert {:error, %Error{reason: :unsupported_type, message: message}} =
               identity([1, %URI{host: "x"}])

      assert message == "args[0][1]: a %URI{} struct cannot be sent to Python"
    end

    test "a Construct is called in the worker; one whose call raises fails the call" do
      assert eval!("repr(x)", %{x: Construct.new("fractions", "Fraction", [1, 3])}) ==
               "Fraction(1, 3)"

      assert eval!("x", %{x: Construct.new("builtins", "dict", [], a: 1)}) == %{"a" => 1}

      assert {:error, %Error{reason: :unsupported_type, message: message}} =
               identity(Construct.new("operator", "truediv", [1, 0]))

      assert message == "cannot convert argument 0 to Python: ZeroDivisionError: division by zero"
    end

    test "a Python encoder registered for a type makes an Elixir struct" do
      assert eval!("import sbdata\nsbdata.Point(1, 2)") == %SnakeBridge.Test.Point{x: 1, y: 2}
    end

    test "a struct the BEAM does not know arrives as a tagged map" do
      assert eval!("import sbdata\nsbdata.Unknown()") ==
               %{"__struct__" => "SnakeBridge.Test.NoSuchStruct", "no_such_field_zz" => 1}
    end

    test "an encoder that raises makes the result unsupported, with its message" do
      assert {:error, %Error{reason: :unsupported_type, message: message}} =
               eval("import sbdata\nsbdata.Broken()")

      assert message =~ "sbdata.Broken"
      assert message =~ "this encoder is broken"
    end
  end
end
