defmodule SnakeBridge.Wheels do
  @moduledoc false
  # Builds pure-Python wheels inside a test, with Python's zipfile and no
  # network, so environments can be installed offline from them.

  @build """
  import base64, hashlib, sys, zipfile

  out, name, version, source = sys.argv[1:5]
  dist = f"{name}-{version}.dist-info"
  files = {
      f"{name}/__init__.py": source,
      f"{dist}/METADATA": f"Metadata-Version: 2.1\\nName: {name}\\nVersion: {version}\\n",
      f"{dist}/WHEEL": "Wheel-Version: 1.0\\nGenerator: snakebridge-tests\\nRoot-Is-Purelib: true\\nTag: py3-none-any\\n",
  }
  record = []
  path = f"{out}/{name}-{version}-py3-none-any.whl"
  with zipfile.ZipFile(path, "w") as whl:
      for member, text in files.items():
          data = text.encode()
          digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
          record.append(f"{member},sha256={digest},{len(data)}")
          whl.writestr(member, data)
      record.append(f"{dist}/RECORD,,")
      whl.writestr(f"{dist}/RECORD", "\\n".join(record) + "\\n")
  print(path)
  """

  @doc "Writes `name`-`version` (a package whose `__init__.py` is `source`) as a wheel into `dir`; returns its path."
  def build!(dir, name, version, source) do
    File.mkdir_p!(dir)
    {out, 0} = System.cmd("python3", ["-c", @build, dir, name, version, source])
    String.trim(out)
  end
end
