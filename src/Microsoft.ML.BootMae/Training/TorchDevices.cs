using System.Runtime.Intrinsics.X86;
using TorchSharp;
using static TorchSharp.torch;

namespace Microsoft.ML.BootMae.Training;

/// <summary>Device and precision choices shared by every BootMAE component.</summary>
internal static class TorchDevices
{
    private static readonly object ThreadsGate = new();
    private static int? _threadsSet;

    /// <summary>Resolves Auto/Cpu/Cuda to a device, logging the choice; Cuda without a GPU throws unless fallback is allowed.</summary>
    public static Device Resolve(BootMaeDevice requested, int gpuDeviceId, bool fallbackToCpu, Action<string>? log) =>
        Resolve(new DeviceRequest(requested, gpuDeviceId, fallbackToCpu, Origin: null), log);

    /// <summary>Resolves a request merged from the Options and the MLContext; messages name the MLContext when it decided.</summary>
    public static Device Resolve(DeviceRequest request, Action<string>? log)
    {
        var (requested, gpuDeviceId, fallbackToCpu, origin) = request;
        BootMaeRuntime.EnsureTorchLoaded();
        bool cudaAvailable = torch.cuda.is_available();
        Device device;
        switch (requested)
        {
            case BootMaeDevice.Cpu:
                device = CPU;
                break;
            case BootMaeDevice.Cuda when cudaAvailable:
            case BootMaeDevice.Auto when cudaAvailable:
                if (gpuDeviceId < 0 || gpuDeviceId >= torch.cuda.device_count())
                {
                    throw new ArgumentOutOfRangeException(nameof(gpuDeviceId), gpuDeviceId, $"GpuDeviceId {gpuDeviceId} does not exist; this machine has {torch.cuda.device_count()} CUDA device(s).");
                }

                device = new Device(DeviceType.CUDA, gpuDeviceId);
                break;
            case BootMaeDevice.Cuda when !fallbackToCpu && origin is not null:
                throw new InvalidOperationException(
                    $"{origin}, but CUDA is not available: reference TorchSharp-cuda-linux (see docs/gpu.md) and check the NVIDIA driver, " +
                    "or set MLContext.FallbackToCpu = true (or Options.FallbackToCpu = true) to train on the CPU, or Options.Device = Cpu.");
            case BootMaeDevice.Cuda when !fallbackToCpu:
                throw new InvalidOperationException(
                    "Device = Cuda, but CUDA is not available: reference TorchSharp-cuda-linux (see docs/gpu.md), check the NVIDIA driver, or set FallbackToCpu = true.");
            case BootMaeDevice.Cuda:
                log?.Invoke(origin is null
                    ? "CUDA was requested but is not available (no GPU or no CUDA runtime package); falling back to the CPU."
                    : $"{origin}, but CUDA is not available (no GPU or no CUDA runtime package); falling back to the CPU.");
                device = CPU;
                break;
            default:
                device = CPU;
                break;
        }

        log?.Invoke($"BootMAE device: {device} (requested {requested}{(origin is null ? string.Empty : " by the MLContext")}; CUDA available: {cudaAvailable}; torch threads: {torch.get_num_threads()}).");
        return device;
    }

    /// <summary>Sets libtorch's intra-op threads once per process (it is process-wide state).</summary>
    public static void SetThreads(int? threads, Action<string>? log)
    {
        if (threads is not { } n)
        {
            return;
        }

        if (n <= 0)
        {
            throw new ArgumentOutOfRangeException(nameof(threads), n, "NumberOfThreads must be positive.");
        }

        lock (ThreadsGate)
        {
            if (_threadsSet == n)
            {
                return;
            }

            torch.set_num_threads(n);
            _threadsSet = n;
            log?.Invoke($"torch intra-op threads set to {n} (process-wide).");
        }
    }

    /// <summary>True where bfloat16 matrix work is fast: CUDA, or x86 CPUs with AVX-512 BF16 or AMX (read from /proc/cpuinfo on Linux).</summary>
    public static bool HasFastBFloat16(Device device)
    {
        if (device.type == DeviceType.CUDA)
        {
            return true;
        }

        if (!Avx512F.IsSupported || !OperatingSystem.IsLinux())
        {
            return false;
        }

        try
        {
            var flags = File.ReadLines("/proc/cpuinfo").FirstOrDefault(l => l.StartsWith("flags", StringComparison.Ordinal)) ?? string.Empty;
            return flags.Contains(" avx512_bf16", StringComparison.Ordinal) || flags.Contains(" amx_bf16", StringComparison.Ordinal);
        }
        catch (IOException)
        {
            return false;
        }
    }
}
