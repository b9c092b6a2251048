// The demo app's script: fetches the current user through the gateway with a stored token.
async function whoami(token) {
  const response = await fetch("/api/me/", { headers: { Authorization: `Bearer ${token}` } });
  if (!response.ok) {
    throw new Error(`gateway answered ${response.status}`);
  }
  return response.json();
}
window.demo = { whoami };
