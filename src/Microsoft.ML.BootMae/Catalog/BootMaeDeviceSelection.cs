using TorchSharp;

namespace Microsoft.ML.BootMae;

/// <summary>Turns <see cref="BootMaeDevice"/> into the device a run uses, before any long work, and logs the choice.</summary>
internal static class BootMaeDeviceSelection
{
    /// <summary>Resolves <see cref="BootMaeDevice.Auto"/> and checks that CUDA is really there.</summary>
    /// <exception cref="InvalidOperationException">CUDA was asked for, is unavailable, and fallback is off.</exception>
    internal static BootMaeDevice Resolve(BootMaeDevice requested, bool fallbackToCpu, int gpuDeviceId, BootMaeLogger log, string component)
    {
        bool cuda = torch.cuda.is_available();
        switch (requested)
        {
            case BootMaeDevice.Cpu:
                log.Info($"{component}: device cpu (requested Cpu).");
                return BootMaeDevice.Cpu;
            case BootMaeDevice.Cuda when cuda && gpuDeviceId < torch.cuda.device_count():
                log.Info($"{component}: device cuda:{gpuDeviceId} (requested Cuda).");
                return BootMaeDevice.Cuda;
            case BootMaeDevice.Cuda when fallbackToCpu:
                log.Warning($"{component}: CUDA device {gpuDeviceId} is not available (no GPU, or the TorchSharp-cpu runtime is referenced); falling back to cpu because FallbackToCpu is true.");
                return BootMaeDevice.Cpu;
            case BootMaeDevice.Cuda:
                throw new InvalidOperationException(
                    $"{component}: Device = Cuda but CUDA device {gpuDeviceId} is not available. Reference TorchSharp-cuda-linux (or TorchSharp-cuda-windows) instead of TorchSharp-cpu, check the NVIDIA driver, or set FallbackToCpu = true.");
            default:
                var chosen = cuda ? BootMaeDevice.Cuda : BootMaeDevice.Cpu;
                log.Info(cuda ? $"{component}: device cuda:{gpuDeviceId} (Auto)." : $"{component}: device cpu (Auto; no CUDA device available).");
                return chosen;
        }
    }
}
