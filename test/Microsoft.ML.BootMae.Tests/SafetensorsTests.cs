using System.Text;
using Microsoft.ML.BootMae.Interop;
using Microsoft.VisualStudio.TestTools.UnitTesting;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Tests;

/// <summary>The hand-written safetensors reader/writer: round trip, half-precision reads and header validation.</summary>
[TestClass]
public sealed class SafetensorsTests
{
    private static byte[] File(string header, byte[] data)
    {
        var h = Encoding.UTF8.GetBytes(header);
        return BitConverter.GetBytes((long)h.Length).Concat(h).Concat(data).ToArray();
    }

    [TestMethod]
    public void Float32RoundTrip()
    {
        using var scope = NewDisposeScope();
        var tensors = new Dictionary<string, Tensor> { ["a.weight"] = randn(3, 4), ["b"] = arange(5, ScalarType.Float32) };
        using var stream = new MemoryStream();
        Safetensors.Save(stream, tensors);
        stream.Position = 0;
        var back = Safetensors.Load(stream);
        Assert.HasCount(2, back);
        TensorAssert.Equal(tensors["a.weight"], back["a.weight"], "a.weight");
        TensorAssert.Equal(tensors["b"], back["b"], "b");
    }

    [TestMethod]
    public void ReadsBFloat16AndFloat16AsFloat32()
    {
        using var scope = NewDisposeScope();
        // 1.5 in bf16 is 0x3FC0; 1.5 in fp16 is 0x3E00.
        var data = new byte[] { 0xC0, 0x3F, 0x00, 0x3E };
        var bytes = File("{\"x\":{\"dtype\":\"BF16\",\"shape\":[1],\"data_offsets\":[0,2]},\"y\":{\"dtype\":\"F16\",\"shape\":[1],\"data_offsets\":[2,4]}}", data);
        var t = Safetensors.Load(new MemoryStream(bytes));
        Assert.AreEqual(1.5f, t["x"].item<float>());
        Assert.AreEqual(1.5f, t["y"].item<float>());
    }

    [TestMethod]
    [DataRow("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,16]}}")]
    [DataRow("{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,8]}}")]
    [DataRow("{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,0]}}")]
    [DataRow("{\"x\":{\"dtype\":\"U8\",\"shape\":[8],\"data_offsets\":[0,8]}}")]
    public void RejectsMalformedEntries(string header)
    {
        var bytes = File(header, new byte[8]);
        Assert.ThrowsExactly<InvalidDataException>(() => Safetensors.Load(new MemoryStream(bytes)));
    }

    [TestMethod]
    public void RejectsHeaderLongerThanFile()
    {
        var bytes = BitConverter.GetBytes(1000L).Concat(Encoding.UTF8.GetBytes("{}")).ToArray();
        Assert.ThrowsExactly<InvalidDataException>(() => Safetensors.Load(new MemoryStream(bytes)));
    }
}
